"""Deploying to SageMaker with plain boto3: one module per job.

Every action is first written down as a list of :class:`~.calls.Call` (service, operation,
parameters), so `--dry-run` can print exactly what would be sent, and the real run prints the
same lines as it sends them. Nothing here needs the SageMaker Python SDK.
"""
