"""deploy -> describe -> autoscale -> describe policies -> invoke -> teardown, through the CLI,
with real boto3 talking HTTP to a moto server on loopback; and the failure paths."""
import json

import pytest
from aws_moto import ACCOUNT, IMAGE, REGION, ROLE, aws, client, moto_server, push_image  # noqa: F401

from kogpt2_serving.cli import main
from kogpt2_serving.aws.packaging import package

BUCKET = "kogpt2-models"
KEY = "kogpt2-serving/kogpt2-serving/model.tar.gz"


@pytest.fixture
def model_tar(tiny_model_dir, tmp_path):
    return package(tiny_model_dir, str(tmp_path / "model.tar.gz"), validate=False).path


@pytest.fixture
def ready(aws, model_tar):
    """A bucket and a pushed image: what the Makefile's ecr-push and the user's bucket provide."""
    client("s3").create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    push_image()
    return model_tar


def deploy_args(model_tar, *extra):
    return ["deploy", "--image", IMAGE, "--role", ROLE, "--model-tar", model_tar, "--bucket", BUCKET,
            "--instance-type", "ml.c5.large", "--workers", "2", "--poll", "0"] + list(extra)


def test_full_lifecycle(ready, aws, capsys):
    sagemaker = client("sagemaker")
    assert main(deploy_args(ready)) == 0
    out = capsys.readouterr().out
    assert "endpoint kogpt2-serving: InService" in out
    assert "-> sagemaker.create_model(kogpt2-serving)" in out

    model = sagemaker.describe_model(ModelName="kogpt2-serving")
    assert model["ExecutionRoleArn"] == ROLE
    container = model["PrimaryContainer"]
    assert container["Image"] == IMAGE
    assert container["ModelDataUrl"] == "s3://{}/{}".format(BUCKET, KEY)
    assert container["Environment"] == {
        "SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20", "SAGEMAKER_REGION": REGION, "SAGEMAKER_MODEL_SERVER_WORKERS": "2"}
    with open(ready, "rb") as f:
        assert client("s3").get_object(Bucket=BUCKET, Key=KEY)["Body"].read() == f.read()
    config = sagemaker.describe_endpoint_config(EndpointConfigName="kogpt2-serving")
    variant, = config["ProductionVariants"]
    assert (variant["VariantName"], variant["ModelName"], variant["InstanceType"], variant["InitialInstanceCount"]) \
        == ("AllTraffic", "kogpt2-serving", "ml.c5.large", 1)
    assert sagemaker.describe_endpoint(EndpointName="kogpt2-serving")["EndpointStatus"] == "InService"

    assert main(["autoscale", "--min-instances", "1", "--max-instances", "3", "--target", "45",
                 "--scale-in-cooldown", "600", "--scale-out-cooldown", "90"]) == 0
    scaling = client("application-autoscaling")
    target, = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert (target["ResourceId"], target["ScalableDimension"], target["MinCapacity"], target["MaxCapacity"]) == \
        ("endpoint/kogpt2-serving/variant/AllTraffic", "sagemaker:variant:DesiredInstanceCount", 1, 3)
    policy, = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    assert policy["PolicyName"] == "kogpt2-serving-invocations-per-instance"
    assert policy["PolicyType"] == "TargetTrackingScaling"
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 45.0
    assert tracking["PredefinedMetricSpecification"] == {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}
    assert (tracking["ScaleInCooldown"], tracking["ScaleOutCooldown"]) == (600, 90)

    capsys.readouterr()
    assert main(["autoscale", "--show"]) == 0
    shown = json.loads(capsys.readouterr().out.split("\n", 2)[2])  # after the two "-> describe" lines
    assert [p["PolicyName"] for p in shown["ScalingPolicies"]] == ["kogpt2-serving-invocations-per-instance"]
    assert shown["ScalableTargets"][0]["MaxCapacity"] == 3

    aws.queue_endpoint_results([json.dumps(["아기 공룡 둘리는 희동이와 함께 놀았다.", 5, 0.42], ensure_ascii=False)])
    assert main(["invoke", "아기 공룡 둘리는 희동이와"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("["):]) == ["아기 공룡 둘리는 희동이와 함께 놀았다.", 5, 0.42]

    assert main(["teardown", "--delete-model-data", "--delete-image"]) == 0
    out = capsys.readouterr().out
    assert "teardown of kogpt2-serving done" in out
    assert sagemaker.list_endpoints()["Endpoints"] == []
    assert sagemaker.list_endpoint_configs()["EndpointConfigs"] == []
    assert sagemaker.list_models()["Models"] == []
    assert scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"] == []
    assert client("s3").list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
    assert client("ecr").list_images(repositoryName="kogpt2-serving")["imageIds"] == []

    assert main(["teardown"]) == 0  # rerunnable: everything is already gone
    assert "already gone" in capsys.readouterr().out


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def nothing_created():
    sagemaker = client("sagemaker")
    return (sagemaker.list_models()["Models"], sagemaker.list_endpoint_configs()["EndpointConfigs"],
            sagemaker.list_endpoints()["Endpoints"]) == ([], [], [])


def test_missing_role_is_refused_before_any_call(ready, capsys):
    argv = deploy_args(ready)
    del argv[argv.index("--role"):argv.index("--role") + 2]
    code, out, err = run_cli(argv, capsys)
    assert code == 1
    assert err.startswith("error: no execution role: pass --role arn:aws:iam::ACCOUNT:role/NAME")
    assert out == ""
    assert client("s3").list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0
    assert nothing_created()


def test_malformed_role_names_the_expected_form(ready, capsys):
    argv = deploy_args(ready)
    argv[argv.index("--role") + 1] = "kogpt2-sagemaker"
    code, _, err = run_cli(argv, capsys)
    assert (code, err) == (1, "error: --role must be an IAM role ARN like arn:aws:iam::123456789012:role/NAME, "
                              "got 'kogpt2-sagemaker'\n")


def test_image_missing_from_ecr(aws, model_tar, capsys):
    client("s3").create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    code, _, err = run_cli(deploy_args(model_tar), capsys)
    assert code == 1
    assert "image kogpt2-serving:0.1.0-cpu is not in ECR (RepositoryNotFoundException)" in err
    assert "make image-cpu ecr-push" in err
    assert nothing_created()
    assert client("s3").list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0  # checked before the upload

    push_image(tag="0.0.9-cpu")  # the repository exists, the tag does not
    code, _, err = run_cli(deploy_args(model_tar), capsys)
    assert "image kogpt2-serving:0.1.0-cpu is not in ECR (ImageNotFoundException)" in err
    assert nothing_created()


def test_image_from_another_region(ready, capsys):
    argv = deploy_args(ready)
    argv[argv.index("--image") + 1] = IMAGE.replace(REGION, "us-west-2")
    code, _, err = run_cli(argv, capsys)
    assert code == 1
    assert "--image is in region us-west-2 but the deployment is in ap-northeast-2" in err
    assert nothing_created()


def test_missing_bucket(aws, model_tar, capsys):
    push_image()
    code, _, err = run_cli(deploy_args(model_tar), capsys)
    assert code == 1
    assert "S3 bucket kogpt2-models does not exist: create it (`aws s3 mb s3://kogpt2-models --region " \
           "ap-northeast-2`)" in err
    assert nothing_created()


def test_archive_not_made_by_package_is_refused(ready, tmp_path, capsys):
    import tarfile

    bare = str(tmp_path / "bare.tar.gz")
    with tarfile.open(bare, "w:gz") as tar:
        tar.add(__file__, arcname="model.params")
    code, _, err = run_cli(deploy_args(bare), capsys)
    assert code == 1
    assert "has no code/inference.py: make it with `kogpt2-serving package --model-dir DIR -o bare.tar.gz`" in err
    assert client("s3").list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0


def test_second_deploy_with_same_name_says_how_to_fix(ready, capsys):
    assert main(deploy_args(ready)) == 0
    code, _, err = run_cli(deploy_args(ready), capsys)
    assert code == 1
    assert err == ("error: a SageMaker model named kogpt2-serving already exists: remove the old deployment with "
                   "`kogpt2-serving teardown --name kogpt2-serving`, or choose another --name\n")
    assert client("sagemaker").describe_endpoint(EndpointName="kogpt2-serving")["EndpointStatus"] == "InService"


def test_dry_run_sends_nothing(ready, capsys):
    code, out, _ = run_cli(deploy_args(ready, "--dry-run"), capsys)
    assert code == 0
    calls = [line.split("(")[0] for line in out.splitlines() if line.endswith("({")]
    assert calls == ["s3.head_bucket", "s3.upload_file", "sagemaker.create_model", "sagemaker.create_endpoint_config",
                     "sagemaker.create_endpoint", "sagemaker.describe_endpoint"]
    assert out.splitlines()[-1] == "dry run: 6 call(s) listed, nothing was sent"
    assert client("s3").list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0
    assert nothing_created()


def test_no_credentials(ready, monkeypatch, capsys):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    code, _, err = run_cli(deploy_args(ready), capsys)
    assert code == 1
    assert err.startswith("error: no AWS credentials found for sts.get_caller_identity(): configure them with "
                          "`aws configure`, AWS_PROFILE or --profile")


def test_autoscale_without_endpoint(aws, capsys):
    code, _, err = run_cli(["autoscale"], capsys)
    assert (code, err) == (1, "error: endpoint kogpt2-serving not found in ap-northeast-2: deploy it first "
                              "(`kogpt2-serving deploy`), or pass --name / --region\n")


def test_autoscale_bounds_are_checked_before_any_call(aws, capsys):
    code, _, err = run_cli(["autoscale", "--min-instances", "3", "--max-instances", "2"], capsys)
    assert (code, err) == (1, "error: --max-instances (2) must be >= --min-instances (3)\n")
    code, _, err = run_cli(["autoscale", "--target", "0", "--dry-run"], capsys)
    assert (code, err) == (1, "error: --target must be > 0 invocations per instance per minute, got 0.0\n")


# moto makes every endpoint InService at once, so it cannot show a failed or slow endpoint:
# these two use botocore's Stubber on a real sagemaker client instead.
class StubbedClients:
    def __init__(self, **clients):
        self.region = REGION
        self._clients = clients

    def get(self, service):
        return self._clients[service]


def endpoint_description(status, **extra):
    import datetime

    now = datetime.datetime(2024, 1, 1)
    return dict({"EndpointName": "kogpt2-serving", "EndpointStatus": status, "CreationTime": now,
                 "LastModifiedTime": now,
                 "EndpointArn": "arn:aws:sagemaker:{}:{}:endpoint/kogpt2-serving".format(REGION, ACCOUNT)}, **extra)


def stubbed_sagemaker(descriptions):
    import boto3
    from botocore.stub import Stubber

    sagemaker = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(sagemaker)
    for description in descriptions:
        stubber.add_response("describe_endpoint", description, {"EndpointName": "kogpt2-serving"})
    stubber.activate()
    return sagemaker, stubber


def test_failed_endpoint_quotes_the_reason_and_where_to_look():
    from kogpt2_serving.aws.deploy import wait_for_endpoint
    from kogpt2_serving.aws.errors import DeploymentError

    sagemaker, stubber = stubbed_sagemaker([
        endpoint_description("Creating"), endpoint_description("Creating"),
        endpoint_description("Failed", FailureReason="The primary container for production variant AllTraffic did "
                                                     "not pass the ping health check.")])
    lines, sleeps = [], []
    with pytest.raises(DeploymentError) as raised:
        wait_for_endpoint(StubbedClients(sagemaker=sagemaker), "kogpt2-serving", poll_seconds=5, write=lines.append,
                          sleep=sleeps.append)
    message = raised.value.message
    assert message.startswith("endpoint kogpt2-serving is Failed: The primary container for production variant "
                              "AllTraffic did not pass the ping health check.\n  fix: read the container log in "
                              "CloudWatch (log group /aws/sagemaker/Endpoints/kogpt2-serving)")
    assert [line.split(":")[1].split("(")[0].strip() for line in lines] == ["Creating", "Failed"]
    assert sleeps == [5, 5]
    stubber.assert_no_pending_responses()


def test_endpoint_wait_gives_up_after_the_timeout():
    from kogpt2_serving.aws.deploy import wait_for_endpoint
    from kogpt2_serving.aws.errors import DeploymentError

    sagemaker, _ = stubbed_sagemaker([endpoint_description("Creating")])
    with pytest.raises(DeploymentError) as raised:
        wait_for_endpoint(StubbedClients(sagemaker=sagemaker), "kogpt2-serving", timeout_seconds=0,
                          write=lambda line: None)
    assert raised.value.message.startswith("endpoint kogpt2-serving is still Creating after 0 s")


def test_container_error_on_invoke_names_the_endpoint_and_the_answer():
    """Stubber: moto's invoke_endpoint always answers 200 (it has no container to fail)."""
    import boto3
    from botocore.stub import Stubber

    from kogpt2_serving.aws.errors import DeploymentError
    from kogpt2_serving.aws.invoke import invoke, request_body

    runtime = boto3.client("sagemaker-runtime", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(runtime)
    body = request_body("안녕", {"top_p": 1.5})
    stubber.add_client_error(
        "invoke_endpoint", service_error_code="ModelError", http_status_code=424,
        service_message='Received client error (400) from primary with message "{"error": "invalid_parameter"}"',
        expected_params={"EndpointName": "kogpt2-serving", "Body": body, "ContentType": "application/json",
                         "Accept": "application/json"})
    stubber.activate()
    with pytest.raises(DeploymentError) as raised:
        invoke(StubbedClients(**{"sagemaker-runtime": runtime}), "kogpt2-serving", body, write=lambda line: None)
    assert raised.value.message.startswith(
        "the container on endpoint kogpt2-serving answered with an error: sagemaker-runtime.invoke_endpoint("
        "kogpt2-serving) failed (ModelError): Received client error (400) from primary with message")
