"""The compute layer: the Gluon network and the table of its weights' names in every checkpoint
format, the KV-cache decode engine, device, dtype and threads.

Everything here may import MXNet; nothing here knows about requests, files or HTTP.
"""
