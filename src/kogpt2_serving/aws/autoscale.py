"""Target-tracking autoscaling of an endpoint variant on SageMakerVariantInvocationsPerInstance.

What the 2020 walkthrough clicked in the console: a scalable target (min/max instances) and
one policy keeping the invocations per instance per minute near a target value.
"""
from typing import NamedTuple

from . import validate
from .calls import Call, is_not_found, out, send, send_all, send_if_present
from .deploy import VARIANT, describe_endpoint_call
from .errors import AwsCallError, DeploymentError

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"


class ScalingSpec(NamedTuple):
    endpoint: str
    min_capacity: int = 1
    max_capacity: int = 4
    target: float = 60.0  # invocations per instance per minute
    scale_in_cooldown: int = 300  # seconds; scale in slowly
    scale_out_cooldown: int = 60  # seconds; scale out quickly
    variant: str = VARIANT


def check_spec(spec):
    validate.name(spec.endpoint)
    validate.at_least(spec.min_capacity, 1, "--min-instances")
    if spec.max_capacity < spec.min_capacity:
        raise DeploymentError("--max-instances ({}) must be >= --min-instances ({})".format(
            spec.max_capacity, spec.min_capacity))
    if not spec.target > 0:
        raise DeploymentError("--target must be > 0 invocations per instance per minute, got {}".format(spec.target))
    validate.at_least(spec.scale_in_cooldown, 0, "--scale-in-cooldown")
    validate.at_least(spec.scale_out_cooldown, 0, "--scale-out-cooldown")


def resource_id(endpoint, variant=VARIANT):
    return "endpoint/{}/variant/{}".format(endpoint, variant)


def policy_name(endpoint):
    return "{}-invocations-per-instance".format(endpoint)


def plan(spec):
    target = {"ServiceNamespace": NAMESPACE, "ResourceId": resource_id(spec.endpoint, spec.variant),
              "ScalableDimension": DIMENSION}
    return [
        Call("application-autoscaling", "register_scalable_target",
             dict(target, MinCapacity=spec.min_capacity, MaxCapacity=spec.max_capacity)),
        Call("application-autoscaling", "put_scaling_policy", dict(
            target, PolicyName=policy_name(spec.endpoint), PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": float(spec.target),
                "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
                "ScaleInCooldown": spec.scale_in_cooldown,
                "ScaleOutCooldown": spec.scale_out_cooldown,
            })),
    ]


def apply(clients, spec, write=out):
    """Registering a variant of an endpoint that is not InService fails in AWS with a vague
    message; check first and say what to do."""
    check_spec(spec)
    try:
        description = send(clients, describe_endpoint_call(spec.endpoint), write)
    except AwsCallError as e:
        if is_not_found(e):
            raise DeploymentError("endpoint {} not found in {}: deploy it first (`kogpt2-serving deploy`), or pass "
                                  "--name / --region".format(spec.endpoint, clients.region))
        raise
    if description["EndpointStatus"] != "InService":
        raise DeploymentError("endpoint {} is {}, not InService: wait for it (deploy waits by default) before "
                              "adding autoscaling".format(spec.endpoint, description["EndpointStatus"]))
    variants = [v["VariantName"] for v in description.get("ProductionVariants", [])]
    if spec.variant not in variants:
        raise DeploymentError("endpoint {} has no variant {!r} (it has: {}): pass --variant".format(
            spec.endpoint, spec.variant, ", ".join(variants) or "none"))
    send_all(clients, plan(spec), write)
    write("autoscaling on for {}: {}-{} instances, target {} invocations/instance/minute".format(
        resource_id(spec.endpoint, spec.variant), spec.min_capacity, spec.max_capacity, spec.target))


def describe(clients, endpoint, variant=VARIANT, write=out):
    """-> (scalable targets, scaling policies) registered for the variant."""
    query = {"ServiceNamespace": NAMESPACE, "ResourceIds": [resource_id(endpoint, variant)],
             "ScalableDimension": DIMENSION}
    targets = send(clients, Call("application-autoscaling", "describe_scalable_targets", query), write)
    policies = send(clients, Call("application-autoscaling", "describe_scaling_policies", {
        "ServiceNamespace": NAMESPACE, "ResourceId": resource_id(endpoint, variant), "ScalableDimension": DIMENSION,
    }), write)
    return targets["ScalableTargets"], policies["ScalingPolicies"]


def removal_plan(endpoint, variant=VARIANT, policy_names=None):
    """Delete the policies, then deregister the target (SageMaker refuses to delete a variant
    that is still registered with autoscaling)."""
    target = {"ServiceNamespace": NAMESPACE, "ResourceId": resource_id(endpoint, variant),
              "ScalableDimension": DIMENSION}
    names = [policy_name(endpoint)] if policy_names is None else policy_names
    return ([Call("application-autoscaling", "delete_scaling_policy", dict(target, PolicyName=n)) for n in names]
            + [Call("application-autoscaling", "deregister_scalable_target", target)])


def remove(clients, endpoint, variant=VARIANT, write=out):
    """Remove what describe shows is registered; nothing registered is fine."""
    targets, policies = describe(clients, endpoint, variant, write)
    calls = removal_plan(endpoint, variant, [p["PolicyName"] for p in policies])
    for call in calls if targets else calls[:-1]:
        send_if_present(clients, call, write)
    if not targets:
        write("   no autoscaling registered for " + resource_id(endpoint, variant))
