"""Deployment errors: the message says what is wrong and what to change."""
from ..errors import ServingError


class DeploymentError(ServingError):
    """A setting is missing or malformed, or AWS refused it; nothing reaches an HTTP client."""

    status = 400
    kind = "deployment_error"


class AwsCallError(DeploymentError):
    """An AWS API call failed; carries the AWS error code when there is one."""

    status = 502
    kind = "aws_error"

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code
