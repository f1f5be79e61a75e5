"""boto3 clients for one region, created on first use so `--dry-run` needs no credentials.

boto3 is an optional dependency (the `deploy` extra); the import error names the extra.
The usual boto3 configuration applies, including `AWS_ENDPOINT_URL` (tests point it at a
moto server on loopback).
"""
from .calls import Call, send
from .errors import DeploymentError


def import_boto3():
    try:
        import boto3
    except ImportError:
        raise DeploymentError("boto3 is not installed: pip install 'kogpt2-serving[deploy]'")
    return boto3


class Clients:
    """Lazily created, cached boto3 clients keyed by service name ("sagemaker", "s3", ...)."""

    def __init__(self, region=None, profile=None):
        self._region = region
        self._profile = profile
        self._session = None
        self._clients = {}
        self._account = None

    @property
    def session(self):
        if self._session is None:
            boto3 = import_boto3()
            self._session = boto3.session.Session(profile_name=self._profile, region_name=self._region)
        return self._session

    @property
    def region(self):
        region = self.session.region_name
        if not region:
            raise DeploymentError("no AWS region configured: pass --region (e.g. ap-northeast-2) "
                                  "or set AWS_REGION")
        return region

    def get(self, service):
        if service not in self._clients:
            self._clients[service] = self.session.client(service, region_name=self.region)
        return self._clients[service]

    def account_id(self):
        """The caller's account, from STS (needed to tell our ECR images from others')."""
        if self._account is None:
            self._account = send(self, Call("sts", "get_caller_identity", {}), quiet=True)["Account"]
        return self._account
