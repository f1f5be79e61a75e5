"""Check names, ARNs and URIs before any call, so a typo fails here with a fix, not in AWS.

Each check returns the parsed value or raises DeploymentError naming the option, the
expected form and the value given.
"""
import re
from typing import NamedTuple, Optional

from .errors import DeploymentError

ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
ECR_IMAGE = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/"
                       r"(?P<repository>[a-z0-9][a-z0-9._/-]*)(?::(?P<tag>[\w][\w.-]{0,127})|@(?P<digest>sha256:[0-9a-f]{64}))?$")
SAGEMAKER_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
INSTANCE_TYPE = re.compile(r"^ml\.[a-z0-9-]+\.[a-z0-9]+$")
S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<key>.*))?$")


class EcrImage(NamedTuple):
    account: str
    region: str
    repository: str
    tag: Optional[str]
    digest: Optional[str]

    def image_id(self):
        """The `imageIds` entry ECR's describe_images and batch_delete_image take."""
        return {"imageDigest": self.digest} if self.digest else {"imageTag": self.tag or "latest"}


def role_arn(value):
    if not value:
        raise DeploymentError("no execution role: pass --role arn:aws:iam::ACCOUNT:role/NAME, a role that "
                              "SageMaker can assume (e.g. one with AmazonSageMakerFullAccess)")
    if not ROLE_ARN.match(value):
        raise DeploymentError("--role must be an IAM role ARN like arn:aws:iam::123456789012:role/NAME, "
                              "got {!r}".format(value))
    return value


def ecr_image(value, region):
    """SageMaker pulls private images only from ECR in the endpoint's own region."""
    if not value:
        raise DeploymentError("no image: pass --image ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY:TAG "
                              "(build and push it with `make image-cpu ecr-push`)")
    match = ECR_IMAGE.match(value)
    if not match:
        raise DeploymentError("--image must be an ECR image URI like "
                              "123456789012.dkr.ecr.{}.amazonaws.com/kogpt2-serving:0.1.0-cpu, got {!r}".format(
                                  region, value))
    image = EcrImage(**match.groupdict())
    if image.region != region:
        raise DeploymentError("--image is in region {} but the deployment is in {}: SageMaker pulls from its own "
                              "region; push the image there (`make ecr-push AWS_REGION={}`) or pass --region {}".format(
                                  image.region, region, region, image.region))
    return image


def name(value, option="--name"):
    if not SAGEMAKER_NAME.match(value or ""):
        raise DeploymentError("{} must be 1-63 letters, digits and hyphens, starting with a letter or digit, "
                              "got {!r}".format(option, value))
    return value


def instance_type(value, option="--instance-type"):
    if not INSTANCE_TYPE.match(value or ""):
        raise DeploymentError("{} must be a SageMaker instance type like ml.c5.xlarge or ml.g4dn.xlarge, "
                              "got {!r}".format(option, value))
    return value


def s3_uri(value, option):
    """-> (bucket, key); the key may be empty (a prefix at the bucket's top)."""
    match = S3_URI.match(value or "")
    if not match:
        raise DeploymentError("{} must be an S3 URI like s3://my-bucket/prefix (bucket names are 3-63 lowercase "
                              "letters, digits, dots and hyphens), got {!r}".format(option, value))
    return match.group("bucket"), match.group("key") or ""


def at_least(value, minimum, option):
    if value < minimum:
        raise DeploymentError("{} must be >= {}, got {}".format(option, minimum, value))
    return value
