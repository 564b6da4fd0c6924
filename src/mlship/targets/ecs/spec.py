"""What the ``ecs`` target asks AWS for. Pure functions: the resource names, the tags, the Fargate task
definition (``ecs.register_task_definition`` arguments), the comparison that decides whether a deploy changes
anything, and the plan text (``mlship deploy --target ecs --dry-run``).

Every resource mlship creates is named from the service (``mlship-<service>``, shortened with a hash where AWS
limits names) and tagged ``mlship:service=<service>`` and ``mlship:managed-by=mlship``: status, rollback and
destroy find them by name and check the tags before touching anything (no local state file).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from mlship.targets.ecs.options import EcsOptions, ListenerRule

CONTAINER_PORT = 8080
CONTAINER_NAME = "model"
LISTENER_PORT = 80
MAX_TAGS = 50  # tags per ECS resource
STOP_TIMEOUT_S = 30  # seconds between SIGTERM and SIGKILL of a task's container
HEALTH_START_MAX_S = 300  # ECS: a container health check's startPeriod is 0 to 300 s
EXECUTION_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
TASK_POLICY = "mlship-artifact-read"  # the inline policy of the task role mlship makes for serve.fetch_at_start
SERVICE_TAG, MANAGED_TAG, VERSION_TAG = "mlship:service", "mlship:managed-by", "mlship:model-version"
TASKS_TRUST = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service":
               "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
READYZ_COMMAND = ["CMD", "python", "-c", "import urllib.request; urllib.request.urlopen("
                  f"'http://127.0.0.1:{CONTAINER_PORT}/readyz', timeout=4)"]


def _short_name(prefix: str, service: str, limit: int) -> str:
    """``prefix-service``, or within ``limit`` characters: ``prefix-<start of service>-<6 hex of its hash>``."""
    name = f"{prefix}-{service}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(service.encode()).hexdigest()[:6]
    return f"{prefix}-{service[:limit - len(prefix) - 8].rstrip('-')}-{digest}"


@dataclass(frozen=True)
class Names:
    """The names of everything the target makes for one service."""

    service: str
    cluster: str
    repository: str
    family: str
    log_group: str
    role: str
    task_role: str  # made only for serve.fetch_at_start without targets.ecs.task_role_arn
    load_balancer: str
    target_group: str
    security_group: str


def names(opts: EcsOptions, service: str) -> Names:
    elb = _short_name("mlship", re.sub(r"[^A-Za-z0-9-]", "-", service), 32)  # ALB/target group: 32, [A-Za-z0-9-]
    return Names(service=service, cluster=opts.cluster, repository=opts.repository or service.lower(),
                 family=_short_name("mlship", service, 255), log_group=f"/mlship/{service}",
                 role=_short_name("mlship", service, 64 - 5) + "-exec",
                 task_role=_short_name("mlship", service, 64 - 5) + "-task", load_balancer=elb, target_group=elb,
                 security_group=_short_name("mlship", service, 255))


def tags(opts: EcsOptions, service: str) -> dict[str, str]:
    """The tags on every resource mlship creates for ``service``."""
    return {SERVICE_TAG: service, MANAGED_TAG: "mlship", **opts.tags}


def key_value(tag_map: dict[str, str], key: str = "Key", value: str = "Value") -> list[dict[str, str]]:
    """``{"k": "v"}`` -> ``[{"Key": "k", "Value": "v"}]`` (ECS spells them ``key``/``value``)."""
    return [{key: k, value: v} for k, v in sorted(tag_map.items())]


def owned(found: list[dict[str, str]] | dict[str, str], service: str) -> bool:
    """Whether tags read back from AWS (a list of Key/Value or key/value pairs, or a dict) say mlship made the
    resource for ``service``."""
    pairs = found if isinstance(found, dict) else {t.get("Key", t.get("key", "")): t.get("Value", t.get("value", ""))
                                                   for t in found}
    return pairs.get(SERVICE_TAG) == service and pairs.get(MANAGED_TAG) == "mlship"


def health_start_period(ready_timeout_s: float) -> int:
    return max(0, min(HEALTH_START_MAX_S, math.ceil(ready_timeout_s)))


def task_definition(opts: EcsOptions, n: Names, *, image: str, region: str, execution_role: str, version: str,
                    ready_timeout_s: float, provenance: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``register_task_definition`` arguments for ``image`` (a reference by digest); ``provenance``: the image's
    code+model pair as tags (:func:`mlship.artifacts.provenance.record`), read back by status and rollback."""
    env = [{"name": "PORT", "value": str(CONTAINER_PORT)}]
    env += [{"name": k, "value": v} for k, v in sorted(opts.environment().items())]
    container = {
        "name": CONTAINER_NAME, "image": image, "essential": True,
        "portMappings": [{"containerPort": CONTAINER_PORT, "hostPort": CONTAINER_PORT, "protocol": "tcp"}],
        "environment": env,
        "secrets": [{"name": k, "valueFrom": v} for k, v in sorted(opts.secrets.items())],
        "stopTimeout": STOP_TIMEOUT_S,
        "healthCheck": {"command": READYZ_COMMAND, "interval": 10, "timeout": 5, "retries": 3,
                        "startPeriod": health_start_period(ready_timeout_s)},
        "logConfiguration": {"logDriver": "awslogs", "options": {
            "awslogs-group": n.log_group, "awslogs-region": region, "awslogs-stream-prefix": "mlship"}},
    }
    own, kept = {**tags(opts, n.service), VERSION_TAG: version}, provenance or {}
    if len(own) + len(kept) > MAX_TAGS:  # your tags first: then the provenance is the model's digest alone
        kept = {k: v for k, v in kept.items() if k.endswith(".sha256") and len(own) < MAX_TAGS}
    spec: dict[str, Any] = {
        "family": n.family, "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"],
        "cpu": str(opts.cpu), "memory": str(opts.memory), "executionRoleArn": execution_role,
        "containerDefinitions": [container],
        "tags": key_value({**own, **kept}, "key", "value"),
    }
    if opts.task_role_arn:
        spec["taskRoleArn"] = opts.task_role_arn
    return spec


def task_view(td: dict[str, Any]) -> dict[str, Any]:
    """The fields mlship sets, from a task definition (the arguments above, or ``describe_task_definition``'s)."""
    c = (td.get("containerDefinitions") or [{}])[0]
    health = c.get("healthCheck") or {}
    return {
        "family": td.get("family"), "cpu": str(td.get("cpu")), "memory": str(td.get("memory")),
        "execution_role": td.get("executionRoleArn"), "task_role": td.get("taskRoleArn"),
        "image": c.get("image"),
        "ports": [(p.get("containerPort"), p.get("protocol", "tcp")) for p in c.get("portMappings", [])],
        "env": sorted((e["name"], e["value"]) for e in c.get("environment", [])),
        "secrets": sorted((s["name"], s["valueFrom"]) for s in c.get("secrets", [])),
        "stop_timeout": c.get("stopTimeout"),
        "health": (health.get("command"), health.get("interval"), health.get("timeout"), health.get("retries"),
                   health.get("startPeriod")),
        "logs": (c.get("logConfiguration") or {}).get("options"),
    }


def task_differences(desired: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Names of the task definition fields mlship sets that differ (empty: nothing to register)."""
    want, have = task_view(desired), task_view(current)
    return [key for key in want if want[key] != have.get(key)]


def plan_lines(opts: EcsOptions, n: Names, *, image: str, region: str | None, ready_timeout_s: float,
               drain_s: int, artifact: str | None = None) -> list[str]:
    """Human-readable steps of a deploy: the resources, and the calls that make or change them."""
    name, _, version = image.rpartition(":")
    where = region or "<your AWS region: AWS_REGION or your profile's>"
    tag_text = ", ".join(f"{k}={v}" for k, v in tags(opts, n.service).items())
    subnets = ", ".join(opts.subnets) if opts.subnets else "the default VPC's default subnets (ec2:DescribeSubnets)"
    groups = (", ".join(opts.security_groups) if opts.security_groups else
              f"security group {n.security_group} (created: port {LISTENER_PORT} from "
              f"{'anywhere' if opts.public else 'the VPC'}, {CONTAINER_PORT} from itself)")
    role = (opts.execution_role_arn or f"role {n.role} (created: trusts ecs-tasks.amazonaws.com, "
            "AmazonECSTaskExecutionRolePolicy attached)")
    secrets = [f"{k}={v}" for k, v in sorted(opts.secrets.items())] or ["(none)"]
    return [
        f"check credentials (sts:GetCallerIdentity) and region {where}; every resource below is tagged {tag_text}",
        f"ECR repository {n.repository} (scan on push, tagged) if missing: ecr:CreateRepository",
        f"push {image} to <account>.dkr.ecr.{where}.amazonaws.com/{n.repository}:{version} (Docker login from "
        "ecr:GetAuthorizationToken; the token goes to the engine only)",
        f"CloudWatch Logs group {n.log_group} with {opts.log_retention_days} days' retention if missing",
        f"execution role: {role}",
        *([task_role_line(opts, n, artifact)] if artifact else []),
        f"network: subnets {subnets}; {groups}",
        f"ECS cluster {n.cluster} if missing (FARGATE)",
        f"task definition family {n.family}: register a revision only if the spec differs from the serving one "
        "(an unchanged deploy registers nothing)",
        f"  image {name}@sha256:<digest of the push> (by digest), cpu {opts.cpu}, memory {opts.memory} MiB, port "
        f"{CONTAINER_PORT}, stopTimeout {STOP_TIMEOUT_S}s, awslogs to {n.log_group}",
        f"  health check GET /readyz every 10s, start period {health_start_period(ready_timeout_s)}s (from "
        f"test.ready_timeout_s={ready_timeout_s:g}); env PORT{''.join(', ' + k for k in sorted(opts.env))}; "
        f"secrets {', '.join(secrets)}",
        _balancer_line(opts, n, drain_s),
        f"ECS service {n.service} in {n.cluster}: create it, or update it to the new revision (FARGATE, "
        f"{opts.desired_count} task(s), deploymentCircuitBreaker enable + rollback: failed new tasks never take the "
        "traffic, ECS returns to the previous revision)",
        *([f"auto scaling between {opts.min_count} and {opts.max_count} tasks, target tracking {opts.scale_on} at "
           f"{opts.scale_target} (application-autoscaling: scalable target + policy, changed only where they "
           "differ)"] if opts.scaling else []),
        "wait until the new deployment is COMPLETED and the target group reports its tasks healthy; a failed "
        "rollout names the stopped task's reason (the previous revision keeps serving)",
        "smoke test: POST each example of mlship.yaml through the load balancer and compare (skipped when it is "
        "internal: not reachable from this machine); a failure moves the service back to the previous revision",
        "a deploy that fails removes what it made (a first deploy: everything; a later one: its new revision)",
        "print the service's URL",
    ]


def task_role_line(opts: EcsOptions, n: Names, artifact: str) -> str:
    """The plan's line for the identity a fetch_at_start task reads its artifact with."""
    from mlship.artifacts import identity

    if identity.scheme(artifact) != "s3":
        need = identity.NEEDS.get(identity.scheme(artifact), {}).get("ecs")
        return identity.plan_line(artifact, "ecs", need.text if need else "(no fetcher for it)")
    statement = json.dumps(identity.s3_statement(artifact), sort_keys=True)
    if opts.task_role_arn:
        return identity.plan_line(artifact, "ecs", f"your task role {opts.task_role_arn} (checked in preflight "
                                  f"with iam:SimulatePrincipalPolicy) must allow {statement}")
    return identity.plan_line(artifact, "ecs", f"task role {n.task_role} (created: trusts ecs-tasks.amazonaws.com, "
                              f"tagged) with the inline policy {TASK_POLICY} {statement}; destroy removes it")


def rule_text(rule: ListenerRule) -> str:
    """A listener rule's conditions in words (``host api.example.com and path /iris/*``)."""
    return " and ".join([f"host {rule.host}"] * bool(rule.host) + [f"path {rule.path}/*"] * bool(rule.path))


def _balancer_line(opts: EcsOptions, n: Names, drain_s: int) -> str:
    group = (f"target group {n.target_group} (ip, HTTP {CONTAINER_PORT}, health check /readyz, deregistration delay "
             f"{drain_s}s)")
    rule = opts.listener_rule
    if opts.listener_arn is None or rule is None:
        return (f"{'internet-facing' if opts.public else 'internal'} Application Load Balancer {n.load_balancer}, "
                f"{group}, listener HTTP {LISTENER_PORT} -> the target group; each created if missing")
    where = rule_text(rule)
    return (f"your listener {opts.listener_arn}: {group}, and a rule (priority "
            f"{rule.priority or 'after every rule it has'}, tagged) forwarding {where} to it"
            + (f" ({rule.path} stripped by the rule's URL rewrite)" if rule.path else "")
            + "; the listener and its load balancer are read, never changed")
