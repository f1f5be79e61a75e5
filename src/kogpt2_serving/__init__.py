"""kogpt2-serving: KoGPT2 (MXNet/Gluon) behind the Amazon SageMaker handler contract.

Importing the package does not import MXNet, so that thread settings can be chosen
before MXNet starts its OpenMP pool (see :mod:`kogpt2_serving.model.device`).
"""
__version__ = "0.1.0"
