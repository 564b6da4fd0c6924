"""status / logs / rollback / destroy of the ``ecs`` target. Everything is found by its name and checked by its
tags (``mlship:service``); destroy removes only what mlship created and says what it left.
"""

from __future__ import annotations

from typing import Any

from mlship.errors import TargetError
from mlship.targets.base import Deployment, Progress, TargetStatus
from mlship.targets.common import poll
from mlship.targets.ecs import resources, scaling, service
from mlship.targets.ecs.api import Aws
from mlship.targets.ecs.spec import EXECUTION_POLICY, VERSION_TAG, Names, owned


def _version(td: dict[str, Any]) -> str:
    return next((t["value"] for t in td.get("tags", []) if t.get("key") == VERSION_TAG), "?")


def _url(aws: Aws, n: Names) -> str | None:
    lb = resources.find_load_balancer(aws, n)
    return f"http://{lb['DNSName']}" if lb else None


def status(aws: Aws, n: Names) -> TargetStatus:
    current = service.find_service(aws, n)
    if current is None:
        return TargetStatus(url=None, image=None, version=None, state="not deployed", history=[])
    td = service.task_definition(aws, current["taskDefinition"])
    history = []
    for arn in service.revisions(aws, n)[:5]:
        other = td if arn == td["taskDefinitionArn"] else service.task_definition(aws, arn)
        history.append(f"{arn.rpartition('/')[2]} ({_version(other)}"
                       + (", serving" if arn == td["taskDefinitionArn"] else "") + ")")
    tg = resources.find_target_group(aws, n)
    healthy = len(service.healthy_targets(aws, tg["TargetGroupArn"])) if tg else 0
    primary: dict[str, Any] = next((d for d in current.get("deployments", []) if d.get("status") == "PRIMARY"), {})
    rollout = primary.get("rolloutState", "?")
    state = (f"{'serving' if rollout == 'COMPLETED' and healthy else rollout.lower()}: "
             f"{current.get('runningCount', 0)}/{current.get('desiredCount', 0)} tasks running, {healthy} healthy "
             "in the target group")
    return TargetStatus(url=_url(aws, n), image=td["containerDefinitions"][0]["image"], version=_version(td),
                        state=state, history=history, ready=rollout == "COMPLETED" and healthy > 0)


def logs(aws: Aws, n: Names, tail: int) -> str:
    """The last ``tail`` lines of the service's log group (its most recent streams)."""
    if resources.find_log_group(aws, n) is None:
        raise TargetError(f"No log group {n.log_group}: nothing was deployed for `{n.service}`.",
                          fix="Deploy first: `mlship deploy --target ecs`.")
    streams = aws.call("describe log streams", "logs", "describe_log_streams", action="logs:DescribeLogStreams",
                       logGroupName=n.log_group, orderBy="LastEventTime", descending=True, limit=5)["logStreams"]
    events: list[tuple[int, str]] = []
    for stream in streams:
        found = aws.call("read log events", "logs", "get_log_events", action="logs:GetLogEvents",
                         logGroupName=n.log_group, logStreamName=stream["logStreamName"], limit=tail,
                         startFromHead=False)
        events += [(int(e["timestamp"]), str(e["message"]).rstrip()) for e in found["events"]]
    return "\n".join(message for _, message in sorted(events)[-tail:])


def rollback(aws: Aws, n: Names, count: int, *, timeout_s: float, poll_s: float, progress: Progress) -> Deployment:
    current = service.find_service(aws, n)
    if current is None:
        raise TargetError(f"Nothing is deployed for `{n.service}` on ECS.", fix="Deploy first: `mlship deploy "
                          "--target ecs`.")
    service.check_owned(current, n)
    arns = service.revisions(aws, n)
    serving = current["taskDefinition"]
    older = arns[arns.index(serving) + 1:] if serving in arns else []
    if not older:
        raise TargetError(f"No task definition revision of `{n.service}` older than the serving "
                          f"{serving.rpartition('/')[2]}.", fix="Deploy another version first; `mlship status "
                          "--target ecs` lists the revisions.")
    target, tg = older[0], resources.find_target_group(aws, n)
    if tg is None:
        raise TargetError(f"The target group {n.target_group} of `{n.service}` is missing.",
                          fix="Run `mlship deploy --target ecs` again: it recreates what is missing.")
    progress(f"moving {n.service} from {serving.rpartition('/')[2]} to {target.rpartition('/')[2]}")
    service.update(aws, n, target, None if aws.opts.scaling else count)
    tasks = count if not aws.opts.scaling else int(current.get("desiredCount") or count)
    service.wait_rollout(aws, n, target, tg["TargetGroupArn"], tasks, timeout_s=timeout_s, poll_s=poll_s,
                         progress=progress)
    td, before = service.task_definition(aws, target), service.task_definition(aws, serving)
    image = str(td["containerDefinitions"][0]["image"])
    return Deployment(url=_url(aws, n), image=image, version=_version(td),
                      previous=str(before["containerDefinitions"][0]["image"]), digest=image.partition("@")[2] or None)


def destroy(aws: Aws, n: Names, *, keep_role: str | None) -> list[str]:
    """Remove what mlship created for the service, in dependency order; returns what was removed and what was
    left (e.g. a role you gave)."""
    removed: list[str] = []
    current = service.find_service(aws, n)
    if current is not None:
        service.check_owned(current, n)
        if scaling.remove(aws, n):
            removed.append(f"auto scaling of {n.service}")
        service.delete(aws, n)
        removed.append(f"ECS service {n.cluster}/{n.service}")
    arns = service.revisions(aws, n)
    for arn in arns:
        aws.call(f"deregister {arn}", "ecs", "deregister_task_definition", action="ecs:DeregisterTaskDefinition",
                 taskDefinition=arn)
    if arns:
        aws.call("delete task definitions", "ecs", "delete_task_definitions", action="ecs:DeleteTaskDefinitions",
                 taskDefinitions=arns)
        removed.append(f"{len(arns)} task definition revision(s) of {n.family}")
    removed += _load_balancer(aws, n)
    removed += _security_group(aws, n)
    if resources.find_log_group(aws, n) is not None:
        aws.call(f"delete log group {n.log_group}", "logs", "delete_log_group", action="logs:DeleteLogGroup",
                 logGroupName=n.log_group)
        removed.append(f"log group {n.log_group}")
    removed += _role(aws, n, keep_role)
    repo = resources.find_repository(aws, n)
    if repo is not None and owned(aws.call("list repository tags", "ecr", "list_tags_for_resource",
                                           action="ecr:ListTagsForResource",
                                           resourceArn=repo["repositoryArn"])["tags"], n.service):
        aws.call(f"delete ECR repository {n.repository}", "ecr", "delete_repository", action="ecr:DeleteRepository",
                 repositoryName=n.repository, force=True)
        removed.append(f"ECR repository {n.repository} and its images")
    elif repo is not None:
        removed.append(f"kept: ECR repository {n.repository} (not created by mlship)")
    removed += _cluster(aws, n)
    return removed


def _load_balancer(aws: Aws, n: Names) -> list[str]:
    removed = []
    lb = resources.find_load_balancer(aws, n)
    if lb is not None and owned(resources.elb_tags(aws, lb["LoadBalancerArn"]), n.service):
        aws.call(f"delete load balancer {n.load_balancer}", "elbv2", "delete_load_balancer",
                 action="elasticloadbalancing:DeleteLoadBalancer", LoadBalancerArn=lb["LoadBalancerArn"])
        removed.append(f"load balancer {n.load_balancer} and its listener")
    tg = resources.find_target_group(aws, n)
    if tg is not None and owned(resources.elb_tags(aws, tg["TargetGroupArn"]), n.service):
        aws.call(f"delete target group {n.target_group}", "elbv2", "delete_target_group",
                 action="elasticloadbalancing:DeleteTargetGroup", TargetGroupArn=tg["TargetGroupArn"])
        removed.append(f"target group {n.target_group}")
    return removed


def _security_group(aws: Aws, n: Names) -> list[str]:
    group = resources.find_security_group(aws, n)
    if group is None or not owned(group.get("Tags", []), n.service):
        return []

    def delete() -> bool | None:  # the load balancer's network interfaces take a while to go
        done = aws.call(f"delete security group {n.security_group}", "ec2", "delete_security_group",
                        action="ec2:DeleteSecurityGroup", missing=("DependencyViolation",), GroupId=group["GroupId"])
        return True if done is not None else None

    poll(f"delete security group {n.security_group}", delete, timeout_s=300, first_delay_s=2,
         fix="Run `mlship destroy --target ecs` again in a few minutes.")
    return [f"security group {n.security_group}"]


def _role(aws: Aws, n: Names, keep_role: str | None) -> list[str]:
    role = resources.find_role(aws, n)
    if role is None or not owned(role.get("Tags") or [], n.service):
        return [f"kept: execution role {keep_role} (yours)"] if keep_role else []
    aws.call(f"detach the policy of {n.role}", "iam", "detach_role_policy", action="iam:DetachRolePolicy",
             missing=("NoSuchEntity",), RoleName=n.role, PolicyArn=EXECUTION_POLICY)
    aws.call(f"delete role {n.role}", "iam", "delete_role", action="iam:DeleteRole", RoleName=n.role)
    return [f"execution role {n.role}"] + ([f"kept: execution role {keep_role} (yours)"] if keep_role else [])


def _cluster(aws: Aws, n: Names) -> list[str]:
    """The cluster goes when mlship created it and no service is left in it."""
    found = aws.call("describe cluster", "ecs", "describe_clusters", action="ecs:DescribeClusters",
                     clusters=[n.cluster], include=["TAGS"])["clusters"]
    cluster = next((c for c in found if c.get("status") == "ACTIVE"), None)
    if cluster is None or not any(t.get("key") == "mlship:managed-by" for t in cluster.get("tags", [])):
        return []
    services = aws.call("list services", "ecs", "list_services", action="ecs:ListServices",
                        cluster=n.cluster)["serviceArns"]
    left = [a for a in services if (service.find_service(aws, Names(**{**n.__dict__, "service":
                                                                       a.rpartition("/")[2]})) is not None)]
    if left:
        return [f"kept: ECS cluster {n.cluster} ({len(left)} other service(s) in it)"]
    aws.call(f"delete cluster {n.cluster}", "ecs", "delete_cluster", action="ecs:DeleteCluster", cluster=n.cluster)
    return [f"ECS cluster {n.cluster}"]
