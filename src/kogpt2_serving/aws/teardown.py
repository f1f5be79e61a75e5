"""Remove what deploy created: autoscaling, endpoint, endpoint config, model(s), and on
request the model data in S3 and the image in ECR.

Names are read from the endpoint (config) and the model (data URL, image) before anything is
deleted; whatever is already gone is reported and skipped, so teardown can be rerun.
"""
from typing import List, NamedTuple

from . import autoscale, validate
from .calls import Call, out, send, send_if_present
from .deploy import VARIANT, describe_endpoint_call
from .ecr import delete_call
from .errors import AwsCallError


class Resources(NamedTuple):
    endpoint: str
    config: str
    variants: List[str]
    models: List[str]
    model_data: List[str]  # s3:// URIs
    images: List[str]


def discover(clients, name, write=out):
    """Read the resource names; missing pieces fall back to deploy's naming (all = name)."""
    endpoint = _describe(clients, describe_endpoint_call(name), write)
    config_name = endpoint["EndpointConfigName"] if endpoint else name
    config = _describe(clients, Call("sagemaker", "describe_endpoint_config", {"EndpointConfigName": config_name}),
                       write)
    variants = config["ProductionVariants"] if config else [{"VariantName": VARIANT, "ModelName": name}]
    models = [v["ModelName"] for v in variants]
    data, images = [], []
    for model in models:
        description = _describe(clients, Call("sagemaker", "describe_model", {"ModelName": model}), write)
        container = (description or {}).get("PrimaryContainer", {})
        data += [container["ModelDataUrl"]] if container.get("ModelDataUrl") else []
        images += [container["Image"]] if container.get("Image") else []
    return Resources(name, config_name, [v["VariantName"] for v in variants], models, data, images)


def _describe(clients, call, write):
    try:
        return send(clients, call, write)
    except AwsCallError as e:
        if "not find" in e.message.lower() or "not found" in e.message.lower():
            write("   not there: " + call.summary())
            return None
        raise


def plan(resources, delete_model_data=False, delete_image=False, account=None):
    """Deletes in dependency order; autoscaling goes first (it pins the variant)."""
    calls = []
    for variant in resources.variants:
        calls += autoscale.removal_plan(resources.endpoint, variant)
    calls.append(Call("sagemaker", "delete_endpoint", {"EndpointName": resources.endpoint}))
    calls.append(Call("sagemaker", "delete_endpoint_config", {"EndpointConfigName": resources.config}))
    calls += [Call("sagemaker", "delete_model", {"ModelName": m}) for m in resources.models]
    if delete_model_data:
        calls += [_delete_object_call(*validate.s3_uri(uri, "ModelDataUrl")) for uri in resources.model_data]
    if delete_image:
        calls += [delete_call(image) for image in _own_images(resources.images, account)]
    return calls


def _delete_object_call(bucket, key):
    return Call("s3", "delete_object", {"Bucket": bucket, "Key": key})


def _own_images(uris, account):
    """ECR images of the caller's account; a base image from another account is left alone."""
    images = []
    for uri in uris:
        match = validate.ECR_IMAGE.match(uri)
        if match and match.group("account") == account:
            images.append(validate.ecr_image(uri, match.group("region")))
    return images


def dry_run_plan(name, delete_model_data=False, delete_image=False):
    """Without AWS, assume deploy's naming; the real run reads the names (and the model's data
    URL and image) with describe calls first."""
    calls = plan(Resources(name, name, [VARIANT], [name], [], []))
    if delete_model_data:
        calls.append(_delete_object_call("<bucket of ModelDataUrl>", "<key of ModelDataUrl>"))
    if delete_image:
        calls.append(Call("ecr", "batch_delete_image", {"repositoryName": "<repository of Image>",
                                                        "imageIds": [{"imageTag": "<tag of Image>"}]}))
    return calls


def teardown(clients, name, delete_model_data=False, delete_image=False, write=out):
    validate.name(name)
    resources = discover(clients, name, write)
    for variant in resources.variants:
        autoscale.remove(clients, name, variant, write)
    account = clients.account_id() if delete_image else None
    for call in plan(resources, delete_model_data, delete_image, account):
        if call.service == "application-autoscaling":
            continue  # done above, from what is actually registered
        response = send_if_present(clients, call, write)
        for failure in (response or {}).get("failures", []):
            write("   not deleted: {} ({})".format(failure.get("failureReason"), failure.get("failureCode")))
    write("teardown of {} done".format(name))
    return resources
