"""Removing what mlship made for a service: ``destroy`` (everything tagged for it, in dependency order; says what
it left, e.g. a role or a listener of yours), and ``undo`` (what ONE failed deploy made: the resources its create
calls answered for, as recorded by :attr:`Aws.created`). Each resource is found by its name and removed only when
its tags say mlship made it for this service.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlship.targets.common import poll
from mlship.targets.ecs import jobs, listener, resources, scaling, service
from mlship.targets.ecs.api import Aws
from mlship.targets.ecs.spec import EXECUTION_POLICY, TASK_POLICY, Names, owned

#: A create call -> the kind of resource it made (the keys of REMOVERS).
MADE_BY = {"create_listener": "load balancer", "create_rule": "listener rule", "create_load_balancer": "load balancer",
           "create_target_group": "target group", "create_security_group": "security group",
           "create_log_group": "log group", "create_role": "role", "create_repository": "repository",
           "create_cluster": "cluster"}


def destroy(aws: Aws, n: Names, *, keep_role: str | None) -> list[str]:
    """Remove what mlship created for the service; returns what was removed and what was left."""
    removed: list[str] = []
    current = service.find_service(aws, n)
    if current is not None:
        service.check_owned(current, n)
        if scaling.remove(aws, n):
            removed.append(f"auto scaling of {n.service}")
        service.delete(aws, n)
        removed.append(f"ECS service {n.cluster}/{n.service}")
    removed += deregister(aws, n, service.revisions(aws, n))
    removed += jobs.remove(aws, n)  # what `mlship batch --target ecs` made
    for remove in REMOVERS.values():
        removed += remove(aws, n)
    removed += [f"kept: execution role {keep_role} (yours)"] if keep_role else []
    removed += _task_role(aws, n)
    return sorted(removed, key=lambda line: line.startswith("kept: "))  # what was removed, then what was left


def undo(aws: Aws, n: Names, created: list[tuple[str, Any]]) -> list[str]:
    """Remove what one deploy's create calls made (``created``: :attr:`Aws.created` of that deploy), and the task
    definition revisions it registered."""
    arns = [str(answer["taskDefinition"]["taskDefinitionArn"]) for op, answer in created
            if op == "register_task_definition"]
    removed = deregister(aws, n, arns)
    kinds = {MADE_BY[op] for op, _ in created if op in MADE_BY}
    for kind, remove in REMOVERS.items():
        if kind in kinds:
            removed += [r for r in remove(aws, n) if not r.startswith("kept: ")]
    if "role" in kinds:
        removed += _task_role(aws, n)
    return removed


def deregister(aws: Aws, n: Names, arns: list[str]) -> list[str]:
    for arn in arns:
        aws.call(f"deregister {arn}", "ecs", "deregister_task_definition", action="ecs:DeregisterTaskDefinition",
                 taskDefinition=arn)
    if not arns:
        return []
    aws.call("delete task definitions", "ecs", "delete_task_definitions", action="ecs:DeleteTaskDefinitions",
             taskDefinitions=arns)
    return [f"task definition revision{'s' * (len(arns) > 1)} " + ", ".join(a.rpartition("/")[2] for a in arns)]


def _rule(aws: Aws, n: Names) -> list[str]:
    return listener.remove(aws, n) if aws.opts.listener_arn else []


def _load_balancer(aws: Aws, n: Names) -> list[str]:
    return _elb_remove(aws, n, resources.find_load_balancer(aws, n), "LoadBalancer",
                       f"load balancer {n.load_balancer} and its listener")


def _target_group(aws: Aws, n: Names) -> list[str]:
    return _elb_remove(aws, n, resources.find_target_group(aws, n), "TargetGroup", f"target group {n.target_group}")


def _elb_remove(aws: Aws, n: Names, found: dict[str, Any] | None, kind: str, what: str) -> list[str]:
    """Delete ``found`` (a LoadBalancer or TargetGroup description) when its tags say mlship made it for the
    service."""
    key = f"{kind}Arn"
    if found is None or not owned(resources.elb_tags(aws, found[key]), n.service):
        return []
    operation = {"LoadBalancer": "delete_load_balancer", "TargetGroup": "delete_target_group"}[kind]
    aws.call(f"delete {what}", "elbv2", operation, action=f"elasticloadbalancing:Delete{kind}", **{key: found[key]})
    return [what]


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


def _log_group(aws: Aws, n: Names) -> list[str]:
    if resources.find_log_group(aws, n) is None:
        return []
    aws.call(f"delete log group {n.log_group}", "logs", "delete_log_group", action="logs:DeleteLogGroup",
             logGroupName=n.log_group)
    return [f"log group {n.log_group}"]


def _role(aws: Aws, n: Names) -> list[str]:
    return _drop_role(aws, n, n.role, {"PolicyArn": EXECUTION_POLICY}, f"execution role {n.role}")


def _task_role(aws: Aws, n: Names) -> list[str]:
    """The task role of serve.fetch_at_start (its inline policy first: IAM deletes no role that has one)."""
    return _drop_role(aws, n, n.task_role, {"PolicyName": TASK_POLICY},
                      f"task role {n.task_role} and its policy {TASK_POLICY}")


def _drop_role(aws: Aws, n: Names, name: str, policy: dict[str, str], what: str) -> list[str]:
    """Remove role ``name`` and its ``policy`` (a managed one, PolicyArn: detached; an inline one, PolicyName:
    deleted) when its tags say mlship made it for the service."""
    role = resources.find_role(aws, n, name)
    if role is None or not owned(role.get("Tags") or [], n.service):
        return []
    operation, action = (("detach_role_policy", "iam:DetachRolePolicy") if "PolicyArn" in policy else
                         ("delete_role_policy", "iam:DeleteRolePolicy"))
    aws.call(f"remove the policy of {name}", "iam", operation, action=action, missing=("NoSuchEntity",),
             RoleName=name, **policy)
    aws.call(f"delete role {name}", "iam", "delete_role", action="iam:DeleteRole", RoleName=name)
    return [what]


def _repository(aws: Aws, n: Names) -> list[str]:
    repo = resources.find_repository(aws, n)
    if repo is None:
        return []
    if not owned(aws.call("list repository tags", "ecr", "list_tags_for_resource", action="ecr:ListTagsForResource",
                          resourceArn=repo["repositoryArn"])["tags"], n.service):
        return [f"kept: ECR repository {n.repository} (not created by mlship)"]
    aws.call(f"delete ECR repository {n.repository}", "ecr", "delete_repository", action="ecr:DeleteRepository",
             repositoryName=n.repository, force=True)
    return [f"ECR repository {n.repository} and its images"]


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


#: In dependency order: the rule before its target group, the load balancer before the security group.
REMOVERS: dict[str, Callable[[Aws, Names], list[str]]] = {
    "listener rule": _rule, "load balancer": _load_balancer, "target group": _target_group,
    "security group": _security_group, "log group": _log_group, "role": _role, "repository": _repository,
    "cluster": _cluster,
}
