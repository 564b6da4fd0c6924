"""The AWS resources around an ECS service, each ensured (found by its name, created when missing, changed only
where it differs) and each found again by status and destroy: the ECR repository and the push, the log group, the
execution role, the security group, and the load balancer with its target group and listener.

A resource found under mlship's name without mlship's tags for this service is never changed or removed: the
deploy stops and says so.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from mlship.errors import EngineError, TargetError
from mlship.targets.base import Progress
from mlship.targets.common import push_progress, push_with_credentials
from mlship.targets.ecs.api import Aws
from mlship.targets.ecs.spec import (
    CONTAINER_PORT,
    EXECUTION_POLICY,
    LISTENER_PORT,
    TASK_POLICY,
    TASKS_TRUST,
    Names,
    key_value,
    owned,
)


def not_ours(kind: str, name: str, service: str) -> TargetError:
    return TargetError(f"{kind} {name} exists but mlship did not create it for `{service}` (its tags do not say "
                       f"mlship:service={service}).", why="mlship never changes or removes what it did not create.",
                       fix=f"Rename the service (`name` in mlship.yaml) or remove {kind} {name} yourself.")


# --- ECR ----------------------------------------------------------------------------------------------------
def find_repository(aws: Aws, n: Names) -> dict[str, Any] | None:
    found = aws.call(f"describe ECR repository {n.repository}", "ecr", "describe_repositories",
                     action="ecr:DescribeRepositories", missing=("RepositoryNotFoundException",),
                     repositoryNames=[n.repository])
    return found["repositories"][0] if found else None


def ensure_repository(aws: Aws, n: Names, tags: dict[str, str], progress: Progress) -> str:
    """The repository's URI; created (tagged, scan on push) when missing. A repository you made is used as it is."""
    repo = find_repository(aws, n)
    if repo is None:
        progress(f"creating ECR repository {n.repository} (scan on push)")
        repo = aws.call(f"create ECR repository {n.repository}", "ecr", "create_repository",
                        action="ecr:CreateRepository", repositoryName=n.repository, tags=key_value(tags),
                        imageScanningConfiguration={"scanOnPush": True})["repository"]
    return str(repo["repositoryUri"])


def push(aws: Aws, image: str, repository_uri: str, n: Names, progress: Progress) -> str:
    """Log the engine in with ecr:GetAuthorizationToken and push ``image``; returns the reference by digest."""
    data = aws.call("ecr:GetAuthorizationToken", "ecr", "get_authorization_token",
                    action="ecr:GetAuthorizationToken")["authorizationData"][0]
    username, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    host = aws.registry_host(repository_uri)
    remote = f"{host}/{n.repository}"
    progress(f"pushing {image} to {remote}")
    try:
        return push_with_credentials(image, remote, username=username, password=password, registry=host,
                                     progress=push_progress(progress))
    except EngineError as exc:
        raise TargetError(exc.message, why=exc.why, fix=f"Check that {host} is reachable and that your identity "
                          f"may push to {n.repository} (ecr:PutImage and the layer upload actions).") from None


# --- CloudWatch Logs ----------------------------------------------------------------------------------------
def find_log_group(aws: Aws, n: Names) -> dict[str, Any] | None:
    groups = aws.call("describe log groups", "logs", "describe_log_groups", action="logs:DescribeLogGroups",
                      logGroupNamePrefix=n.log_group)["logGroups"]
    return next((g for g in groups if g["logGroupName"] == n.log_group), None)


def ensure_log_group(aws: Aws, n: Names, tags: dict[str, str], days: int, progress: Progress) -> None:
    group = find_log_group(aws, n)
    if group is None:
        progress(f"creating log group {n.log_group} ({days} days' retention)")
        aws.call(f"create log group {n.log_group}", "logs", "create_log_group", action="logs:CreateLogGroup",
                 logGroupName=n.log_group, tags=tags)
    if group is None or group.get("retentionInDays") != days:
        aws.call(f"set the retention of {n.log_group}", "logs", "put_retention_policy",
                 action="logs:PutRetentionPolicy", logGroupName=n.log_group, retentionInDays=days)


# --- IAM ----------------------------------------------------------------------------------------------------
def find_role(aws: Aws, n: Names, name: str | None = None) -> dict[str, Any] | None:
    """Role ``name`` (default: the execution role's name), or None."""
    found = aws.call(f"get role {name or n.role}", "iam", "get_role", action="iam:GetRole", missing=("NoSuchEntity",),
                     RoleName=name or n.role)
    return found["Role"] if found else None


def ensure_role(aws: Aws, n: Names, tags: dict[str, str], progress: Progress) -> str:
    """The execution role mlship makes when none is given: trusts ecs-tasks, AmazonECSTaskExecutionRolePolicy."""
    role = find_role(aws, n)
    if role is None:
        progress(f"creating execution role {n.role}")
        role = aws.call(f"create role {n.role}", "iam", "create_role", action="iam:CreateRole", RoleName=n.role,
                        AssumeRolePolicyDocument=json.dumps(TASKS_TRUST), Tags=key_value(tags),
                        Description=f"ECS task execution role of the mlship service {n.service}")["Role"]
    elif not owned(role.get("Tags") or _role_tags(aws, n), n.service):
        raise not_ours("IAM role", n.role, n.service)
    attached = aws.call(f"list the policies of {n.role}", "iam", "list_attached_role_policies",
                        action="iam:ListAttachedRolePolicies", RoleName=n.role)["AttachedPolicies"]
    if EXECUTION_POLICY not in [p["PolicyArn"] for p in attached]:
        aws.call(f"attach AmazonECSTaskExecutionRolePolicy to {n.role}", "iam", "attach_role_policy",
                 action="iam:AttachRolePolicy", RoleName=n.role, PolicyArn=EXECUTION_POLICY)
    return str(role["Arn"])


def _role_tags(aws: Aws, n: Names, name: str | None = None) -> list[dict[str, str]]:
    found = aws.call(f"list the tags of {name or n.role}", "iam", "list_role_tags", action="iam:ListRoleTags",
                     RoleName=name or n.role)
    return list(found["Tags"])


def ensure_task_role(aws: Aws, n: Names, tags: dict[str, str], artifact: str, progress: Progress) -> str:
    """serve.fetch_at_start without targets.ecs.task_role_arn: the task role (trusts ecs-tasks) whose one inline
    policy reads exactly the artifact's object (s3:GetObject, s3:GetObjectVersion); put only when it
    differs."""
    from urllib.parse import unquote

    from mlship.artifacts.identity import s3_policy

    role = find_role(aws, n, n.task_role)
    if role is None:
        progress(f"creating task role {n.task_role} (reads {artifact})")
        role = aws.call(f"create role {n.task_role}", "iam", "create_role", action="iam:CreateRole",
                        RoleName=n.task_role, AssumeRolePolicyDocument=json.dumps(TASKS_TRUST), Tags=key_value(tags),
                        Description=f"ECS task role of the mlship service {n.service}: reads its model")["Role"]
    elif not owned(role.get("Tags") or _role_tags(aws, n, n.task_role), n.service):
        raise not_ours("IAM role", n.task_role, n.service)
    wanted = s3_policy(artifact)
    have = aws.call(f"get the policy of {n.task_role}", "iam", "get_role_policy", action="iam:GetRolePolicy",
                    missing=("NoSuchEntity",), RoleName=n.task_role, PolicyName=TASK_POLICY)
    document = (have or {}).get("PolicyDocument")
    if isinstance(document, str):  # the API answers it URL-encoded; boto3 decodes it into a dict
        document = json.loads(unquote(document))
    if document is None or json.dumps(document, sort_keys=True) != wanted:
        progress(f"granting {n.task_role} read access to {artifact} ({TASK_POLICY})")
        aws.call(f"put the policy of {n.task_role}", "iam", "put_role_policy", action="iam:PutRolePolicy",
                 RoleName=n.task_role, PolicyName=TASK_POLICY, PolicyDocument=wanted)
    return str(role["Arn"])


# --- network ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Network:
    vpc: str
    cidr: str
    subnets: list[str]
    security_groups: list[str]
    public_ip: bool  # tasks in the default VPC's public subnets need one to pull from ECR


def subnets(aws: Aws) -> tuple[list[str], str, str]:
    """(subnet ids, VPC id, VPC CIDR): the given subnets, or the default VPC's default ones."""
    if aws.opts.subnets:
        found = aws.call("describe subnets", "ec2", "describe_subnets", action="ec2:DescribeSubnets",
                         SubnetIds=list(aws.opts.subnets))["Subnets"]
    else:
        found = aws.call("describe subnets", "ec2", "describe_subnets", action="ec2:DescribeSubnets",
                         Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    if not found:
        raise TargetError(f"No default subnets in {aws.region}.", fix="Set targets.ecs.subnets in mlship.yaml.")
    vpc = str(found[0]["VpcId"])
    cidr = aws.call("describe VPC", "ec2", "describe_vpcs", action="ec2:DescribeVpcs", VpcIds=[vpc])["Vpcs"][0]
    return sorted(str(s["SubnetId"]) for s in found), vpc, str(cidr["CidrBlock"])


def find_security_group(aws: Aws, n: Names, vpc: str | None = None) -> dict[str, Any] | None:
    filters = [{"Name": "group-name", "Values": [n.security_group]}]
    if vpc:
        filters.append({"Name": "vpc-id", "Values": [vpc]})
    groups = aws.call("describe security groups", "ec2", "describe_security_groups",
                      action="ec2:DescribeSecurityGroups", Filters=filters)["SecurityGroups"]
    return groups[0] if groups else None


def ensure_network(aws: Aws, n: Names, tags: dict[str, str], progress: Progress,
                   lb_groups: list[str] | None = None) -> Network:
    """The subnets and security groups of the tasks (and of mlship's load balancer). ``lb_groups``: the security
    groups of your load balancer (listener_arn), which then reach the tasks' port."""
    ids, vpc, cidr = subnets(aws)
    if aws.opts.security_groups:
        return Network(vpc, cidr, ids, list(aws.opts.security_groups), public_ip=not aws.opts.subnets)
    group = find_security_group(aws, n, vpc)
    if group is None:
        progress(f"creating security group {n.security_group} in {vpc}")
        group_id = aws.call(f"create security group {n.security_group}", "ec2", "create_security_group",
                            action="ec2:CreateSecurityGroup", GroupName=n.security_group, VpcId=vpc,
                            Description=f"mlship service {n.service}: load balancer and tasks",
                            TagSpecifications=[{"ResourceType": "security-group", "Tags": key_value(tags)}])["GroupId"]
        group = {"GroupId": group_id, "IpPermissions": [], "Tags": key_value(tags)}
    elif not owned(group.get("Tags", []), n.service):
        raise not_ours("security group", n.security_group, n.service)
    _ingress(aws, group, "0.0.0.0/0" if aws.opts.public else cidr, lb_groups)
    return Network(vpc, cidr, ids, [str(group["GroupId"])], public_ip=not aws.opts.subnets)


def _ingress(aws: Aws, group: dict[str, Any], listener_source: str, lb_groups: list[str] | None) -> None:
    """Port 80 from ``listener_source`` and the container port from the group itself (mlship's load balancer), or
    the container port from ``lb_groups`` (yours); only what is missing."""
    have = {(p.get("FromPort"), r.get("CidrIp") or "") for p in group.get("IpPermissions", [])
            for r in p.get("IpRanges", [])}
    have |= {(p.get("FromPort"), g.get("GroupId") or "") for p in group.get("IpPermissions", [])
             for g in p.get("UserIdGroupPairs", [])}
    wanted = []
    if lb_groups is None and (LISTENER_PORT, listener_source) not in have:
        wanted.append({"IpProtocol": "tcp", "FromPort": LISTENER_PORT, "ToPort": LISTENER_PORT,
                       "IpRanges": [{"CidrIp": listener_source}]})
    for source in [group["GroupId"]] if lb_groups is None else lb_groups:
        if (CONTAINER_PORT, source) not in have:
            wanted.append({"IpProtocol": "tcp", "FromPort": CONTAINER_PORT, "ToPort": CONTAINER_PORT,
                           "UserIdGroupPairs": [{"GroupId": source}]})
    if wanted:
        aws.call("open the security group's ports", "ec2", "authorize_security_group_ingress",
                 action="ec2:AuthorizeSecurityGroupIngress", GroupId=group["GroupId"], IpPermissions=wanted)


# --- load balancer ------------------------------------------------------------------------------------------
def elb_tags(aws: Aws, arn: str) -> list[dict[str, str]]:
    found = aws.call("describe tags", "elbv2", "describe_tags", action="elasticloadbalancing:DescribeTags",
                     ResourceArns=[arn])["TagDescriptions"]
    return list(found[0]["Tags"]) if found else []


def find_load_balancer(aws: Aws, n: Names) -> dict[str, Any] | None:
    found = aws.call(f"describe load balancer {n.load_balancer}", "elbv2", "describe_load_balancers",
                     action="elasticloadbalancing:DescribeLoadBalancers", missing=("LoadBalancerNotFound",),
                     Names=[n.load_balancer])
    return found["LoadBalancers"][0] if found else None


def find_target_group(aws: Aws, n: Names) -> dict[str, Any] | None:
    found = aws.call(f"describe target group {n.target_group}", "elbv2", "describe_target_groups",
                     action="elasticloadbalancing:DescribeTargetGroups", missing=("TargetGroupNotFound",),
                     Names=[n.target_group])
    return found["TargetGroups"][0] if found else None


@dataclass(frozen=True)
class Route:
    """Where the service's requests come from: its target group, the URL to report, and how this machine reaches
    it (``base`` with the ``host`` header; ``internal``: a load balancer inside the VPC, not reachable from here)."""

    tg_arn: str
    url: str
    base: str
    host: str | None
    internal: bool
    label: str  # "<load balancer>/<target group>": the requests metric's resource label


def ensure_target_group(aws: Aws, n: Names, vpc: str, tags: dict[str, str], drain_s: int,
                        progress: Progress) -> str:
    """The target group's ARN (ip targets, HTTP 8080, health check /readyz, the deregistration delay)."""
    tg = find_target_group(aws, n)
    if tg is None:
        progress(f"creating target group {n.target_group} (health check /readyz)")
        tg = aws.call(f"create target group {n.target_group}", "elbv2", "create_target_group",
                      action="elasticloadbalancing:CreateTargetGroup", Name=n.target_group, Protocol="HTTP",
                      Port=CONTAINER_PORT, VpcId=vpc, TargetType="ip", HealthCheckPath="/readyz",
                      HealthCheckIntervalSeconds=10, HealthyThresholdCount=2, UnhealthyThresholdCount=3,
                      Matcher={"HttpCode": "200"}, Tags=key_value(tags))["TargetGroups"][0]
    elif not owned(elb_tags(aws, tg["TargetGroupArn"]), n.service):
        raise not_ours("target group", n.target_group, n.service)
    tg_arn = str(tg["TargetGroupArn"])
    attrs = aws.call("describe target group attributes", "elbv2", "describe_target_group_attributes",
                     action="elasticloadbalancing:DescribeTargetGroupAttributes", TargetGroupArn=tg_arn)["Attributes"]
    if {a["Key"]: a["Value"] for a in attrs}.get("deregistration_delay.timeout_seconds") != str(drain_s):
        aws.call("set the deregistration delay", "elbv2", "modify_target_group_attributes",
                 action="elasticloadbalancing:ModifyTargetGroupAttributes", TargetGroupArn=tg_arn,
                 Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": str(drain_s)}])
    return tg_arn


def metric_label(lb_arn: str, tg_arn: str) -> str:
    return f"{lb_arn.partition(':loadbalancer/')[2]}/{tg_arn.rpartition(':')[2]}"


def ensure_load_balancer(aws: Aws, n: Names, net: Network, tags: dict[str, str], drain_s: int,
                         progress: Progress) -> Route:
    """mlship's own load balancer, its target group and its HTTP listener."""
    lb = find_load_balancer(aws, n)
    if lb is None:
        progress(f"creating load balancer {n.load_balancer}")
        lb = aws.call(f"create load balancer {n.load_balancer}", "elbv2", "create_load_balancer",
                      action="elasticloadbalancing:CreateLoadBalancer", Name=n.load_balancer, Subnets=net.subnets,
                      SecurityGroups=net.security_groups, Type="application", Tags=key_value(tags),
                      Scheme="internet-facing" if aws.opts.public else "internal")["LoadBalancers"][0]
    elif not owned(elb_tags(aws, lb["LoadBalancerArn"]), n.service):
        raise not_ours("load balancer", n.load_balancer, n.service)
    tg_arn = ensure_target_group(aws, n, net.vpc, tags, drain_s, progress)
    listeners = aws.call("describe listeners", "elbv2", "describe_listeners",
                         action="elasticloadbalancing:DescribeListeners",
                         LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]
    if not any(li["Port"] == LISTENER_PORT for li in listeners):
        progress(f"creating listener HTTP {LISTENER_PORT} -> {n.target_group}")
        aws.call("create listener", "elbv2", "create_listener", action="elasticloadbalancing:CreateListener",
                 LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=LISTENER_PORT, Tags=key_value(tags),
                 DefaultActions=[{"Type": "forward", "TargetGroupArn": tg_arn}])
    url = f"http://{lb['DNSName']}"
    return Route(tg_arn=tg_arn, url=url, base=url, host=None, internal=lb.get("Scheme") == "internal",
                 label=metric_label(str(lb["LoadBalancerArn"]), tg_arn))
