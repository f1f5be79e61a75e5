"""Put model.tar.gz where SageMaker reads it, after checking the bucket is there."""
from .calls import Call, send
from .errors import AwsCallError, DeploymentError


def model_data_uri(bucket, key):
    return "s3://{}/{}".format(bucket, key)


def default_key(prefix, name):
    return "{}/{}/model.tar.gz".format(prefix.strip("/"), name) if prefix.strip("/") else "{}/model.tar.gz".format(name)


def upload_call(path, bucket, key):
    return Call("s3", "upload_file", {"Filename": path, "Bucket": bucket, "Key": key})


def check_bucket(clients, bucket, write):
    """head_bucket first: a missing bucket is a clear message instead of an upload traceback."""
    try:
        send(clients, Call("s3", "head_bucket", {"Bucket": bucket}), write)
    except AwsCallError as e:
        if e.code in ("404", "NoSuchBucket"):
            raise DeploymentError("S3 bucket {} does not exist: create it (`aws s3 mb s3://{} --region {}`) or pass "
                                  "another --bucket".format(bucket, bucket, clients.region))
        raise


def upload(clients, path, bucket, key, write):
    check_bucket(clients, bucket, write)
    send(clients, upload_call(path, bucket, key), write)
    return model_data_uri(bucket, key)
