"""batch-transform against a moto server on loopback (moto implements transform jobs and
completes them at once); the failed-job path uses botocore's Stubber, which moto cannot show."""
import datetime

import pytest
from aws_moto import ACCOUNT, IMAGE, REGION, ROLE, aws, client, moto_server, push_image  # noqa: F401

from kogpt2_serving.aws.batch import TransformSpec, default_job_name, run, transform_call
from kogpt2_serving.aws.errors import DeploymentError
from kogpt2_serving.cli import main

BUCKET = "kogpt2-batch"


@pytest.fixture
def model(aws):
    """A model as `deploy --model-only` leaves it, and one JSON Lines input file."""
    s3 = client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=BUCKET, Key="models/model.tar.gz", Body=b"archive")
    lines = ['"아기 공룡 둘리는"', '{"inputs": "오늘은 날씨가", "parameters": {"max_new_tokens": 8}}']
    s3.put_object(Bucket=BUCKET, Key="input/prompts.jsonl", Body="\n".join(lines).encode("utf-8"))
    push_image()
    assert main(["deploy", "--model-only", "--image", IMAGE, "--role", ROLE,
                 "--model-data", "s3://{}/models/model.tar.gz".format(BUCKET)]) == 0
    return "kogpt2-serving"


def test_transform_job_over_jsonlines(model, capsys):
    code = main(["batch-transform", "--input", "s3://{}/input/".format(BUCKET),
                 "--output", "s3://{}/output/".format(BUCKET), "--job-name", "kogpt2-batch-1",
                 "--instance-count", "2", "--instance-type", "ml.c5.2xlarge", "--poll", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "transform job kogpt2-batch-1: Completed" in out
    assert out.splitlines()[-1] == "results: s3://kogpt2-batch/output/<input file name>.out (one JSON line per input line)"
    job = client("sagemaker").describe_transform_job(TransformJobName="kogpt2-batch-1")
    assert job["ModelName"] == "kogpt2-serving"
    assert job["BatchStrategy"] == "SingleRecord"
    assert job["TransformInput"] == {
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://kogpt2-batch/input/"}},
        "ContentType": "application/jsonlines", "SplitType": "Line", "CompressionType": "None"}
    assert job["TransformOutput"] == {"S3OutputPath": "s3://kogpt2-batch/output/", "Accept": "application/jsonlines",
                                      "AssembleWith": "Line"}
    assert job["TransformResources"] == {"InstanceType": "ml.c5.2xlarge", "InstanceCount": 2}


def test_missing_model_says_how_to_make_one(aws, capsys):
    code = main(["batch-transform", "--input", "s3://kogpt2-batch/in/", "--output", "s3://kogpt2-batch/out/"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: model kogpt2-serving not found: create it with `kogpt2-serving deploy --model-only")
    assert client("sagemaker").list_transform_jobs()["TransformJobSummaries"] == []


def test_bad_options_are_refused_before_any_call(aws, capsys):
    code = main(["batch-transform", "--input", "/local/prompts.jsonl", "--output", "s3://kogpt2-batch/out/"])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: --input must be an S3 URI like s3://my-bucket/prefix")
    code = main(["batch-transform", "--input", "s3://kogpt2-batch/in/", "--output", "s3://kogpt2-batch/out/",
                 "--instance-count", "0", "--dry-run"])
    assert code == 1
    assert capsys.readouterr().err == "error: --instance-count must be >= 1, got 0\n"


def test_default_job_name_is_unique_per_second_and_valid():
    assert default_job_name("kogpt2-serving", now=0) == "kogpt2-serving-19700101-000000"
    assert len(default_job_name("m" * 63, now=0)) == 63


class StubbedClients:
    region = REGION

    def __init__(self, sagemaker):
        self.sagemaker = sagemaker

    def get(self, service):
        assert service == "sagemaker"
        return self.sagemaker


def test_failed_job_quotes_the_reason():
    """Stubber: moto's transform jobs are Completed at once and cannot fail."""
    import boto3
    from botocore.stub import Stubber

    sagemaker = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(sagemaker)
    now = datetime.datetime(2024, 1, 1)
    stubber.add_response("describe_model", {"ModelName": "kogpt2-serving", "CreationTime": now,
                                            "ModelArn": "arn:aws:sagemaker:{}:{}:model/kogpt2-serving".format(
                                                REGION, ACCOUNT)}, {"ModelName": "kogpt2-serving"})
    spec = TransformSpec("j1", "kogpt2-serving", "s3://bkt/in/", "s3://bkt/out/")
    stubber.add_response("create_transform_job", {"TransformJobArn": "arn:aws:sagemaker:x:1:transform-job/j"},
                         transform_call(spec).params)
    job = {"TransformJobName": "j1", "TransformJobArn": "arn:aws:sagemaker:x:1:transform-job/j1",
           "ModelName": "kogpt2-serving", "CreationTime": now,
           "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in"}}},
           "TransformResources": {"InstanceType": "ml.c5.xlarge", "InstanceCount": 1}}
    stubber.add_response("describe_transform_job", dict(job, TransformJobStatus="InProgress"),
                         {"TransformJobName": "j1"})
    stubber.add_response("describe_transform_job", dict(job, TransformJobStatus="Failed", FailureReason=(
        "ClientError: See job logs for more information")), {"TransformJobName": "j1"})
    stubber.activate()
    lines = []
    with pytest.raises(DeploymentError) as raised:
        run(StubbedClients(sagemaker), spec, poll_seconds=0, write=lines.append, sleep=lambda s: None)
    assert raised.value.message.startswith("transform job j1 is Failed: ClientError: See job logs for more "
                                           "information\n  fix: read the job's log in CloudWatch")
    assert [line for line in lines if "transform job" in line] == ["   transform job j1: InProgress (0 s)",
                                                                   "   transform job j1: Failed (0 s)"]
    stubber.assert_no_pending_responses()
