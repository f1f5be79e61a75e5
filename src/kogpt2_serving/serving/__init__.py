"""The SageMaker side: request codec, the handler contract, the MMS handler service, the
stock-toolkit entry, the Multi Model Server launcher and the public gateway in front of it."""
