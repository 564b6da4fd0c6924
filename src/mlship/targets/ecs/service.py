"""One ECS service's operations: the cluster, task definition revisions, the service itself, the rollout wait,
and why a rollout failed (the stopped task's reason and its last log lines).
"""

from __future__ import annotations

from typing import Any

from mlship.errors import TargetError
from mlship.targets.base import Progress
from mlship.targets.common import poll
from mlship.targets.ecs.api import Aws
from mlship.targets.ecs.resources import Network, not_ours
from mlship.targets.ecs.spec import CONTAINER_NAME, CONTAINER_PORT, Names, key_value, owned

CIRCUIT_BREAKER = {"deploymentCircuitBreaker": {"enable": True, "rollback": True},
                   "maximumPercent": 200, "minimumHealthyPercent": 100}


def ensure_cluster(aws: Aws, n: Names, tags: dict[str, str], progress: Progress) -> None:
    found = aws.call(f"describe cluster {n.cluster}", "ecs", "describe_clusters", action="ecs:DescribeClusters",
                     clusters=[n.cluster])["clusters"]
    if not any(c.get("status") == "ACTIVE" for c in found):
        progress(f"creating ECS cluster {n.cluster}")
        aws.call(f"create cluster {n.cluster}", "ecs", "create_cluster", action="ecs:CreateCluster",
                 clusterName=n.cluster, tags=key_value({k: v for k, v in tags.items() if k != "mlship:service"},
                                                       "key", "value"))


def find_service(aws: Aws, n: Names) -> dict[str, Any] | None:
    """The ACTIVE service (None when missing, deleted, or its cluster does not exist)."""
    found = aws.call(f"describe service {n.service}", "ecs", "describe_services", action="ecs:DescribeServices",
                     missing=("ClusterNotFoundException",), cluster=n.cluster, services=[n.service], include=["TAGS"])
    services = [s for s in (found or {}).get("services", []) if s.get("status") == "ACTIVE"]
    return services[0] if services else None


def check_owned(service: dict[str, Any], n: Names) -> None:
    if not owned(service.get("tags", []), n.service):
        raise not_ours("ECS service", f"{n.cluster}/{n.service}", n.service)


def task_definition(aws: Aws, arn: str) -> dict[str, Any]:
    found = aws.call(f"describe task definition {arn}", "ecs", "describe_task_definition",
                     action="ecs:DescribeTaskDefinition", taskDefinition=arn, include=["TAGS"])
    return {**found["taskDefinition"], "tags": found.get("tags", [])}


def register(aws: Aws, spec: dict[str, Any]) -> str:
    found = aws.call(f"register task definition {spec['family']}", "ecs", "register_task_definition",
                     action="ecs:RegisterTaskDefinition", **spec)
    return str(found["taskDefinition"]["taskDefinitionArn"])


def revisions(aws: Aws, n: Names) -> list[str]:
    """The family's ACTIVE revisions, newest first."""
    found = aws.call(f"list task definitions {n.family}", "ecs", "list_task_definitions",
                     action="ecs:ListTaskDefinitions", familyPrefix=n.family, status="ACTIVE", sort="DESC")
    mine = [a for a in found["taskDefinitionArns"] if a.rpartition("/")[2].rpartition(":")[0] == n.family]
    return sorted(mine, key=lambda a: int(a.rpartition(":")[2]), reverse=True)


def create(aws: Aws, n: Names, task_arn: str, net: Network, tg_arn: str, tags: dict[str, str], count: int,
           grace_s: int) -> None:
    aws.call(f"create ECS service {n.service}", "ecs", "create_service", action="ecs:CreateService",
             cluster=n.cluster, serviceName=n.service, taskDefinition=task_arn, desiredCount=count,
             launchType="FARGATE", deploymentConfiguration=CIRCUIT_BREAKER,
             networkConfiguration=_network(net), healthCheckGracePeriodSeconds=grace_s,
             loadBalancers=[{"targetGroupArn": tg_arn, "containerName": CONTAINER_NAME,
                             "containerPort": CONTAINER_PORT}],
             propagateTags="SERVICE", enableECSManagedTags=True, tags=key_value(tags, "key", "value"))


def update(aws: Aws, n: Names, task_arn: str, count: int | None) -> None:
    """The service to ``task_arn``; ``count`` None leaves the desired count to auto scaling."""
    sized: dict[str, Any] = {} if count is None else {"desiredCount": count}
    aws.call(f"update ECS service {n.service}", "ecs", "update_service", action="ecs:UpdateService",
             cluster=n.cluster, service=n.service, taskDefinition=task_arn, deploymentConfiguration=CIRCUIT_BREAKER,
             **sized)


def delete(aws: Aws, n: Names) -> None:
    """Delete the service and stop its tasks (``force``: no scaling to 0 first)."""
    aws.call(f"delete ECS service {n.service}", "ecs", "delete_service", action="ecs:DeleteService",
             cluster=n.cluster, service=n.service, force=True)


def _network(net: Network) -> dict[str, Any]:
    return {"awsvpcConfiguration": {"subnets": net.subnets, "securityGroups": net.security_groups,
                                    "assignPublicIp": "ENABLED" if net.public_ip else "DISABLED"}}


def tasks(aws: Aws, n: Names, status: str = "RUNNING") -> list[dict[str, Any]]:
    """The service's tasks with ``status`` as their desired status (filtered by the service's group)."""
    arns = aws.call("list tasks", "ecs", "list_tasks", action="ecs:ListTasks", cluster=n.cluster,
                    serviceName=n.service, desiredStatus=status)["taskArns"]
    if not arns:
        return []
    found = aws.call("describe tasks", "ecs", "describe_tasks", action="ecs:DescribeTasks", cluster=n.cluster,
                     tasks=arns)["tasks"]
    return [t for t in found if t.get("group") == f"service:{n.service}"]


def task_ip(task: dict[str, Any]) -> str | None:
    for attachment in task.get("attachments", []):
        for detail in attachment.get("details", []):
            if detail.get("name") == "privateIPv4Address":
                return str(detail["value"])
    return None


def healthy_targets(aws: Aws, tg_arn: str) -> set[str]:
    found = aws.call("describe target health", "elbv2", "describe_target_health",
                     action="elasticloadbalancing:DescribeTargetHealth", TargetGroupArn=tg_arn)
    return {str(d["Target"]["Id"]) for d in found["TargetHealthDescriptions"]
            if d["TargetHealth"]["State"] == "healthy"}


def wait_rollout(aws: Aws, n: Names, task_arn: str, tg_arn: str, count: int, *, timeout_s: float, poll_s: float,
                 progress: Progress) -> None:
    """Until the deployment of ``task_arn`` is COMPLETED and ``count`` of its tasks are healthy in the target
    group; TargetError (naming the revision, the stopped task's reason and its last log lines) when it fails."""
    revision = task_arn.rpartition("/")[2]
    seen: list[str] = []

    def state() -> bool | None:
        service = find_service(aws, n)
        if service is None:
            raise TargetError(f"ECS service {n.service} disappeared during the deploy.", fix="Deploy again.")
        mine = [d for d in service.get("deployments", []) if d.get("taskDefinition") == task_arn]
        primary = next((d for d in service.get("deployments", []) if d.get("status") == "PRIMARY"), None)
        if not mine or mine[0].get("rolloutState") == "FAILED" or (primary and primary["taskDefinition"] != task_arn):
            reason = (mine[0].get("rolloutStateReason") if mine else "") or "the circuit breaker rolled it back"
            raise failed(aws, n, task_arn, primary, reason)
        line = f"rollout of {revision}: {mine[0].get('rolloutState', '?')}, {mine[0].get('runningCount', 0)}/" \
               f"{count} running"
        if not seen or seen[-1] != line:
            seen.append(line)
            progress(line)
        if mine[0].get("rolloutState") != "COMPLETED":
            return None
        ips = {task_ip(t) for t in tasks(aws, n) if t.get("taskDefinitionArn") == task_arn}
        healthy = len(ips & healthy_targets(aws, tg_arn))
        return True if healthy >= count else None

    poll(f"rollout of {revision}", state, timeout_s=timeout_s, first_delay_s=poll_s, max_delay_s=max(poll_s, 5.0),
         fix="`mlship status --target ecs` shows where it stands; `mlship logs --target ecs` the tasks' output.")


def failed(aws: Aws, n: Names, task_arn: str, primary: dict[str, Any] | None, reason: str) -> TargetError:
    revision = task_arn.rpartition("/")[2]
    stopped = [t for t in tasks(aws, n, "STOPPED") if t.get("taskDefinitionArn") == task_arn]
    why = "; ".join(sorted({stop_reason(t) for t in stopped})) or "no task of it stopped yet"
    logs = last_log_lines(aws, n, stopped[0], 10) if stopped else ""
    serving = (f" Revision {primary['taskDefinition'].rpartition('/')[2]} keeps serving." if primary and
               primary.get("taskDefinition") != task_arn else "")
    return TargetError(
        f"Revision {revision} of {n.service} failed: {reason}. Stopped tasks: {why}.{serving}"
        + (f"\nLast log lines of task {stopped[0]['taskArn'].rpartition('/')[2]}:\n{logs}" if logs else ""),
        why="ECS's deployment circuit breaker stops a rollout whose tasks do not stay healthy (/readyz) and returns "
        "to the previous revision.",
        fix="Run `mlship test` on the image; `mlship logs --target ecs` shows the tasks' output.")


def stop_reason(task: dict[str, Any]) -> str:
    container = (task.get("containers") or [{}])[0]
    code = container.get("exitCode")
    return (str(task.get("stoppedReason") or "stopped") + (f" (exit code {code})" if code is not None else "")
            + (f": {container['reason']}" if container.get("reason") else ""))


def last_log_lines(aws: Aws, n: Names, task: dict[str, Any], tail: int) -> str:
    stream = f"mlship/{CONTAINER_NAME}/{task['taskArn'].rpartition('/')[2]}"
    found = aws.call("read the task's log", "logs", "get_log_events", action="logs:GetLogEvents",
                     missing=("ResourceNotFoundException",), logGroupName=n.log_group, logStreamName=stream,
                     limit=tail, startFromHead=False)
    return "\n".join(f"  {e['message'].rstrip()}" for e in (found or {}).get("events", []))
