"""Application Auto Scaling of the ECS service (``min_count``/``max_count``/``scale_on``/``scale_target``): a
scalable target on the service's desired count and one target tracking policy, each changed only where it differs;
removed when the options no longer ask for scaling, and by destroy.
"""

from __future__ import annotations

from typing import Any

from mlship.targets.base import Progress
from mlship.targets.ecs.api import Aws
from mlship.targets.ecs.spec import Names

NAMESPACE, DIMENSION = "ecs", "ecs:service:DesiredCount"
METRICS = {"cpu": "ECSServiceAverageCPUUtilization", "memory": "ECSServiceAverageMemoryUtilization",
           "requests": "ALBRequestCountPerTarget"}


def resource_id(n: Names) -> str:
    return f"service/{n.cluster}/{n.service}"


def policy_name(n: Names) -> str:
    return f"mlship-{n.service}-target-tracking"


def find_target(aws: Aws, n: Names) -> dict[str, Any] | None:
    found = aws.call("describe scalable targets", "application-autoscaling", "describe_scalable_targets",
                     action="application-autoscaling:DescribeScalableTargets", ServiceNamespace=NAMESPACE,
                     ResourceIds=[resource_id(n)], ScalableDimension=DIMENSION)["ScalableTargets"]
    return found[0] if found else None


def policy_config(aws: Aws, resource_label: str) -> dict[str, Any]:
    """The target tracking configuration the options ask for (``resource_label``: the ALB's and target group's,
    for the requests metric)."""
    metric: dict[str, Any] = {"PredefinedMetricType": METRICS[aws.opts.scale_on]}
    if aws.opts.scale_on == "requests":
        metric["ResourceLabel"] = resource_label
    return {"TargetValue": float(aws.opts.scale_target), "PredefinedMetricSpecification": metric,
            "ScaleOutCooldown": 60, "ScaleInCooldown": 300}


def ensure(aws: Aws, n: Names, tags: dict[str, str], resource_label: str, progress: Progress) -> None:
    """Scaling as the options say: registered and tracking, or (no min/max) removed."""
    current = find_target(aws, n)
    opts = aws.opts
    if not opts.scaling:
        if current is not None:
            remove(aws, n)
            progress("auto scaling removed (no min_count/max_count)")
        return
    if current is None or (current["MinCapacity"], current["MaxCapacity"]) != (opts.min_count, opts.max_count):
        progress(f"auto scaling {n.service} between {opts.min_count} and {opts.max_count} tasks")
        aws.call("register the scalable target", "application-autoscaling", "register_scalable_target",
                 action="application-autoscaling:RegisterScalableTarget", ServiceNamespace=NAMESPACE,
                 ResourceId=resource_id(n), ScalableDimension=DIMENSION, MinCapacity=opts.min_count,
                 MaxCapacity=opts.max_count, Tags=tags)
    wanted = policy_config(aws, resource_label)
    policies = aws.call("describe scaling policies", "application-autoscaling", "describe_scaling_policies",
                        action="application-autoscaling:DescribeScalingPolicies", ServiceNamespace=NAMESPACE,
                        ResourceId=resource_id(n), ScalableDimension=DIMENSION,
                        PolicyNames=[policy_name(n)])["ScalingPolicies"]
    have = policies[0].get("TargetTrackingScalingPolicyConfiguration") if policies else None
    if have is None or {k: have.get(k) for k in wanted} != wanted:
        progress(f"target tracking: {opts.scale_on} at {opts.scale_target}")
        aws.call("put the scaling policy", "application-autoscaling", "put_scaling_policy",
                 action="application-autoscaling:PutScalingPolicy", PolicyName=policy_name(n),
                 ServiceNamespace=NAMESPACE, ResourceId=resource_id(n), ScalableDimension=DIMENSION,
                 PolicyType="TargetTrackingScaling", TargetTrackingScalingPolicyConfiguration=wanted)


def remove(aws: Aws, n: Names) -> bool:
    """Deregister the scalable target (its policies go with it); False when there was none."""
    if find_target(aws, n) is None:
        return False
    aws.call("deregister the scalable target", "application-autoscaling", "deregister_scalable_target",
             action="application-autoscaling:DeregisterScalableTarget", ServiceNamespace=NAMESPACE,
             ResourceId=resource_id(n), ScalableDimension=DIMENSION)
    return True

