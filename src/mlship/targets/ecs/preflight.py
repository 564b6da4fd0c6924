"""ECS preflight: read-only checks before anything is built. The region; the credentials (sts:GetCallerIdentity);
the network (the given subnets exist, or the default VPC has default subnets); with ``listener_arn``, your listener
(it exists, on an Application Load Balancer in the subnets' VPC); and the IAM actions the deploy needs, simulated
for your identity with iam:SimulatePrincipalPolicy where it may call that (each denied action named with the option
that avoids it). One try per call, short timeouts: the pipeline gives all checks 4.5 s.
"""

from __future__ import annotations

import json
import re

from mlship.errors import TargetError
from mlship.reports import Check
from mlship.targets.ecs.api import AVOIDED_BY, Aws, ClientFactory, error_code, short_error
from mlship.targets.ecs.options import EcsOptions

TIMEOUT_S = 3.0
ALWAYS = [
    "ecr:GetAuthorizationToken", "ecr:DescribeRepositories", "ecr:CreateRepository", "ecr:TagResource",
    "ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart", "ecr:CompleteLayerUpload",
    "ecr:PutImage",
    "ecs:DescribeClusters", "ecs:CreateCluster", "ecs:RegisterTaskDefinition", "ecs:DescribeTaskDefinition",
    "ecs:DescribeServices", "ecs:CreateService", "ecs:UpdateService", "ecs:TagResource", "ecs:ListTasks",
    "ecs:DescribeTasks",
    "elasticloadbalancing:DescribeLoadBalancers", "elasticloadbalancing:DescribeTargetGroups",
    "elasticloadbalancing:CreateTargetGroup", "elasticloadbalancing:ModifyTargetGroupAttributes",
    "elasticloadbalancing:DescribeListeners", "elasticloadbalancing:DescribeTargetHealth",
    "elasticloadbalancing:DescribeTags", "elasticloadbalancing:AddTags",
    "ec2:DescribeVpcs", "ec2:DescribeSecurityGroups",
    "logs:DescribeLogGroups", "logs:CreateLogGroup", "logs:PutRetentionPolicy", "logs:TagResource",
    "iam:PassRole",
]


def needed_actions(opts: EcsOptions, artifact: str | None = None) -> list[str]:
    """The IAM actions a deploy with these options calls (``artifact``: serve.fetch_at_start's)."""
    actions = list(ALWAYS)
    if artifact and artifact.startswith("s3://") and not opts.task_role_arn:  # mlship's task role
        actions += ["iam:GetRole", "iam:CreateRole", "iam:TagRole", "iam:GetRolePolicy", "iam:PutRolePolicy"]
    if opts.listener_arn:
        actions += [f"elasticloadbalancing:{a}" for a in ("DescribeRules", "CreateRule", "ModifyRule")]
        if opts.listener_rule is not None and opts.listener_rule.priority is not None:
            actions.append("elasticloadbalancing:SetRulePriorities")
    else:
        actions += ["elasticloadbalancing:CreateLoadBalancer", "elasticloadbalancing:CreateListener"]
    if not opts.subnets:
        actions.append("ec2:DescribeSubnets")
    if not opts.security_groups:
        actions += ["ec2:CreateSecurityGroup", "ec2:AuthorizeSecurityGroupIngress", "ec2:CreateTags"]
    if opts.scaling:
        actions += [f"application-autoscaling:{a}" for a in ("RegisterScalableTarget", "PutScalingPolicy",
                                                              "DescribeScalableTargets", "DescribeScalingPolicies")]
        actions.append("iam:CreateServiceLinkedRole")
    if not opts.execution_role_arn:
        actions += ["iam:GetRole", "iam:CreateRole", "iam:AttachRolePolicy", "iam:TagRole"]
    return list(dict.fromkeys(actions))


def principal_arn(caller_arn: str) -> str:
    """The IAM principal to simulate: an assumed role's session ARN becomes the role's ARN."""
    found = re.match(r"^arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([^/]+)/", caller_arn)
    return f"arn:{found[1]}:iam::{found[2]}:role/{found[3]}" if found else caller_arn


def checks(opts: EcsOptions, client_factory: ClientFactory | None = None, *, actions: list[str] | None = None,
           zones: int = 2, artifact: str | None = None) -> list[Check]:
    """The checks of a deploy, or (``actions``: the IAM actions to simulate; ``zones``: the Availability Zones the
    subnets need) of another operation: a batch job's tasks need no load balancer, so one zone will do.
    ``artifact``: the URI serve.fetch_at_start reads in the task (None: the image carries the model)."""
    aws = Aws(opts, client_factory=client_factory, attempts=1, timeout_s=TIMEOUT_S)
    try:
        try:
            region = aws.region
        except TargetError as exc:
            return [Check(name="region", ok=False, detail=exc.message, fix=exc.fix)]
        found = [Check(name="region", ok=True, detail=region)]
        try:
            identity = aws.call("sts:GetCallerIdentity", "sts", "get_caller_identity")
        except TargetError as exc:
            return [*found, Check(name="credentials", ok=False, detail=exc.message, fix=exc.fix)]
        arn = str(identity["Arn"])
        found.append(Check(name="credentials", ok=True, detail=f"{arn} (account {identity['Account']})"))
        network, vpc = _network(aws, zones)
        found.append(network)
        if opts.listener_arn:
            found.append(_listener(aws, vpc))
        found.append(_permissions(aws, principal_arn(arn), actions or needed_actions(opts, artifact)))
        if artifact:
            found.append(artifact_access(aws, artifact))
        return found
    finally:
        aws.close()


def _listener(aws: Aws, vpc: str | None) -> Check:
    from mlship.targets.ecs import listener

    try:
        yours = listener.lookup(aws)
        if vpc is not None:
            listener.check_vpc(yours, vpc, bool(aws.opts.subnets))
    except TargetError as exc:
        return Check(name="listener", ok=False, detail=exc.message, fix=exc.fix)
    return Check(name="listener", ok=True, detail=f"{yours.protocol}:{yours.port} of {yours.lb_name} "
                 f"({'internal' if yours.internal else 'internet-facing'}, {yours.vpc})")


def _network(aws: Aws, zones_needed: int = 2) -> tuple[Check, str | None]:
    """The network check, and the VPC of the subnets (None when unknown)."""
    opts = aws.opts
    try:
        if opts.subnets:
            subnets = aws.call("ec2:DescribeSubnets", "ec2", "describe_subnets", action="ec2:DescribeSubnets",
                               SubnetIds=list(opts.subnets))["Subnets"]
            zones = {s["AvailabilityZone"] for s in subnets}
            if len(zones) < zones_needed:
                return Check(name="network", ok=False, detail=f"the subnets are all in {', '.join(zones)}",
                             fix="An Application Load Balancer needs subnets in two Availability Zones: add one to "
                             "targets.ecs.subnets."), None
            ok = Check(name="network", ok=True, detail=f"{len(subnets)} subnets in {len(zones)} zones")
            return ok, str(subnets[0]["VpcId"])
        vpcs = aws.call("ec2:DescribeVpcs", "ec2", "describe_vpcs", action="ec2:DescribeVpcs",
                        Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            return Check(name="network", ok=False, detail=f"region {aws.region} has no default VPC",
                         fix="Set targets.ecs.subnets (two or more, in different Availability Zones) in "
                         "mlship.yaml."), None
        subnets = aws.call("ec2:DescribeSubnets", "ec2", "describe_subnets", action="ec2:DescribeSubnets",
                           Filters=[{"Name": "vpc-id", "Values": [vpcs[0]["VpcId"]]},
                                    {"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    except TargetError as exc:
        return Check(name="network", ok=False, detail=exc.message, fix=exc.fix), None
    if len(subnets) < zones_needed:
        return Check(name="network", ok=False, detail=f"the default VPC {vpcs[0]['VpcId']} has {len(subnets)} default "
                     "subnet(s); an Application Load Balancer needs two",
                     fix="Set targets.ecs.subnets in mlship.yaml."), None
    vpc = str(vpcs[0]["VpcId"])
    return Check(name="network", ok=True, detail=f"default VPC {vpc}, {len(subnets)} default subnets"), vpc


def artifact_access(aws: Aws, artifact: str) -> Check:
    """Whether the task can read ``artifact`` at start: s3:// through the task role (mlship's gets the grant;
    yours is simulated for the object's ARN), https:// needs nothing, models:/ its token as a secret, gs:// cannot."""
    from botocore.exceptions import BotoCoreError, ClientError

    from mlship.artifacts import identity

    role = aws.opts.task_role_arn
    if identity.scheme(artifact) != "s3":
        return identity.variable_check(artifact, "ecs", set(aws.opts.secrets))
    statement = identity.s3_statement(artifact)
    if not role:
        return Check(name=identity.CHECK, ok=True, detail=f"the deploy grants the task role it makes "
                     f"{', '.join(statement['Action'])} on {statement['Resource']}")
    try:
        pages = aws.client("iam").get_paginator("simulate_principal_policy").paginate(
            PolicySourceArn=role, ActionNames=statement["Action"], ResourceArns=[statement["Resource"]])
        results = [r for page in pages for r in page["EvaluationResults"]]
    except (ClientError, BotoCoreError) as exc:
        code = error_code(exc) if isinstance(exc, ClientError) else ""
        return Check(name=identity.CHECK, ok=True, detail=f"not checked: iam:SimulatePrincipalPolicy on {role} "
                     f"answered {code or short_error(exc)}; the task role needs {json.dumps(statement)}")
    denied = sorted(r["EvalActionName"] for r in results if r.get("EvalDecision") != "allowed")
    if denied:
        return Check(name=identity.CHECK, ok=False, detail=f"serve.fetch_at_start: your task role {role} may not "
                     f"{', '.join(denied)} on {statement['Resource']}, so the task could not read its model",
                     fix=f"Add this statement to a policy of {role.rpartition('/')[2]}: {json.dumps(statement)} "
                     "(or remove targets.ecs.task_role_arn: mlship then makes a task role with it).")
    return Check(name=identity.CHECK, ok=True, detail=f"{role} may {', '.join(statement['Action'])} on "
                 f"{statement['Resource']}")


def _permissions(aws: Aws, principal: str, actions: list[str]) -> Check:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        pages = aws.client("iam").get_paginator("simulate_principal_policy").paginate(
            PolicySourceArn=principal, ActionNames=actions)
        results = [r for page in pages for r in page["EvaluationResults"]]
    except ClientError as exc:
        return Check(name="permissions", ok=True, detail=f"not checked: iam:SimulatePrincipalPolicy answered "
                     f"{error_code(exc) or short_error(exc)} (the deploy will find out; docs/targets-ecs.md lists "
                     "the actions)")
    except BotoCoreError as exc:
        return Check(name="permissions", ok=True, detail=f"not checked: {short_error(exc)}")
    denied = sorted(r["EvalActionName"] for r in results if r.get("EvalDecision") != "allowed")
    if not denied:
        return Check(name="permissions", ok=True, detail=f"{len(actions)} actions the deploy needs are allowed")
    avoidable = {a: AVOIDED_BY[a] for a in denied if a in AVOIDED_BY}
    lines = [f"{a} (or set targets.ecs.{avoidable[a]})" if a in avoidable else a for a in denied]
    options = sorted(set(avoidable.values()))
    return Check(name="permissions", ok=False, detail=f"{principal} is denied: {', '.join(lines)}",
                 fix=f"Grant {', '.join(a for a in denied if a not in avoidable) or 'them'} to {principal}"
                 + (f", or set targets.ecs.{' and targets.ecs.'.join(options)} in mlship.yaml so mlship does not "
                    "need the actions marked" if options else "") + ".")
