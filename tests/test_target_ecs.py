"""The ecs target without Docker: options, names, the plan (pure), the preflight against moto in server mode
(tests/emulators/ecs_moto.py) with the real boto3 client, and `mlship deploy --target ecs --dry-run`.

The deploy life cycle (images run by the test-side agent) is in test_target_ecs_deploy.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import copy_project
from emulators import ecs_fixtures
from emulators.ecs_fixtures import REGION
from emulators.ecs_moto import MotoServer
from mlship import plugins
from mlship.cli import app
from mlship.contract_io import Project, load_project
from mlship.errors import ContractError, PreflightError, TargetError
from mlship.pipeline import deploy, preflight
from mlship.targets.ecs import EcsTarget, resources
from mlship.targets.ecs.api import Aws
from mlship.targets.ecs.options import FARGATE_SIZES
from mlship.targets.ecs.preflight import needed_actions, principal_arn
from mlship.targets.ecs.spec import names, task_definition, task_differences

# the shared fixtures (tests/emulators/ecs_fixtures.py), by name
aws = ecs_fixtures.aws
moto = ecs_fixtures.moto


ROLE = "arn:aws:iam::123456789012:role/ecsTaskExecutionRole"


def make_project(source: Path, dest: Path, ecs: dict[str, Any] | None = None, **changes: Any) -> Project:
    return copy_project(source, dest, targets=None if ecs is None else {"ecs": ecs}, **changes)


# --- options (pure) ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "expected"), [
    ({"regoin": "eu-west-1"}, "targets.ecs.regoin: unknown key `regoin`; did you mean `region`?"),
    ({"memory": 512, "cpu": 1024}, "targets.ecs.memory: Fargate does not offer 512 MiB with cpu 1024; with cpu "
                                   "1024 choose memory 2048, 3072, ..., 8192, got 512"),
    ({"cpu": 256, "memory": 4096}, "targets.ecs.memory: Fargate does not offer 4096 MiB with cpu 256; with cpu 256 "
                                   "choose memory 512, 1024, 2048"),
    ({"cpu": 300}, "targets.ecs.cpu: Fargate offers cpu 256, 512, 1024, 2048, 4096, 8192, 16384"),
    ({"region": "Ireland"}, "targets.ecs.region: expected a region such as eu-west-1"),
    ({"subnets": ["subnet-0abc12345"]}, "targets.ecs.subnets: an Application Load Balancer needs subnets in at "
                                        "least two Availability Zones"),
    ({"subnets": ["net-1", "subnet-0abc12345"]}, "targets.ecs.subnets: expected subnet IDs such as"),
    ({"security_groups": ["default"]}, "targets.ecs.security_groups: expected security group IDs"),
    ({"execution_role_arn": "ecsTaskExecutionRole"}, "targets.ecs.execution_role_arn: expected a role ARN"),
    ({"secrets": {"DB": "db-password"}}, "targets.ecs.secrets: DB: expected the ARN of a Secrets Manager secret"),
    ({"env": {"PORT": 1}}, "targets.ecs.env.PORT: PORT is set by mlship"),
    ({"env": {"API_TOKEN": "x"}}, "targets.ecs.env.API_TOKEN: 'API_TOKEN' looks like a secret"),
    ({"log_retention_days": 10}, "targets.ecs.log_retention_days: CloudWatch Logs keeps logs 1, 3, 5"),
    ({"desired_count": 0}, "targets.ecs.desired_count: Input should be greater than or equal to 1"),
    ({"tags": {"mlship:service": "x"}}, "targets.ecs.tags: 'mlship:service' is set by mlship or AWS"),
    ({"tags": {f"team{i}": "x" for i in range(48)}}, "targets.ecs.tags: 48 tags: AWS keeps at most 50 tags on a "
                                                     "resource and mlship sets 3"),
    ({"min_count": 1}, "targets.ecs.max_count: auto scaling needs both min_count and max_count (or neither)"),
    ({"min_count": 3, "max_count": 2}, "targets.ecs.max_count: must be at least min_count (3), got 2"),
    ({"min_count": 2, "max_count": 4}, "targets.ecs.max_count: desired_count (1) must be between min_count and "
                                       "max_count"),
    ({"min_count": 1, "max_count": 2, "scale_target": 150}, "targets.ecs.scale_target: a utilisation target is a "
                                                            "percentage (1 to 100)"),
    ({"scale_on": "gpu"}, "targets.ecs.scale_on: Input should be 'cpu', 'memory' or 'requests'"),
])
def test_invalid_options_name_the_key(iris_dir: Path, options: dict[str, Any], expected: str) -> None:
    with pytest.raises(ContractError) as info:
        EcsTarget(load_project(iris_dir), options)
    assert expected in info.value.message
    assert info.value.exit_code == 2


def test_every_fargate_pair_is_accepted_and_defaults(iris_dir: Path) -> None:
    project = load_project(iris_dir)
    for cpu, memories in FARGATE_SIZES.items():
        for memory in (memories[0], memories[-1]):
            assert EcsTarget(project, {"cpu": cpu, "memory": memory}).opts.memory == memory
    target = EcsTarget(project, {})
    o = target.opts
    assert (o.region, o.cluster, o.cpu, o.memory, o.desired_count, o.public, o.log_retention_days) == \
        (None, "mlship", 512, 1024, 1, False, 30)
    assert plugins.get("target", "ecs") is EcsTarget
    assert target.drain_s == 8  # serve.shutdown_grace_s


def test_names_fit_aws_limits(tmp_path: Path, iris_dir: Path) -> None:
    short = names(EcsTarget(load_project(iris_dir), {}).opts, "iris")
    assert (short.load_balancer, short.target_group, short.family, short.role, short.log_group, short.repository) \
        == ("mlship-iris", "mlship-iris", "mlship-iris", "mlship-iris-exec", "/mlship/iris", "iris")
    long_name = "a-very-long-model-service-name-for-fraud"
    n = names(EcsTarget(load_project(iris_dir), {}).opts, long_name)
    assert len(n.load_balancer) <= 32 and n.load_balancer.startswith("mlship-a-very-long")
    assert n.load_balancer != names(EcsTarget(load_project(iris_dir), {}).opts, long_name + "2").load_balancer
    assert len(n.role) <= 64 and n.family == f"mlship-{long_name}"
    assert principal_arn("arn:aws:sts::123456789012:assumed-role/Deployer/ci-run-7") == \
        "arn:aws:iam::123456789012:role/Deployer"
    assert principal_arn("arn:aws:iam::123456789012:user/me") == "arn:aws:iam::123456789012:user/me"


def test_shutdown_grace_must_fit_the_stop_timeout(tmp_path: Path, iris_dir: Path) -> None:
    with pytest.raises(TargetError) as info:
        EcsTarget(make_project(iris_dir, tmp_path / "p", serve={"shutdown_grace_s": 31}), {})
    assert "ECS kills a container 30s after SIGTERM" in info.value.message
    assert info.value.fix is not None and "below 30" in info.value.fix


def test_task_definition_and_its_comparison(iris_dir: Path) -> None:
    target = EcsTarget(load_project(iris_dir), {"env": {"LOG_LEVEL": "info"}, "task_role_arn": ROLE, "secrets": {
        "MLSHIP_API_KEYS": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:keys"}})
    image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/iris@sha256:" + "a" * 64
    td = task_definition(target.opts, target.names, image=image, region=REGION, execution_role=ROLE, version="v1",
                         ready_timeout_s=60)
    [c] = td["containerDefinitions"]
    assert (td["cpu"], td["memory"], td["networkMode"], td["requiresCompatibilities"]) == \
        ("512", "1024", "awsvpc", ["FARGATE"])
    assert c["image"] == image and c["stopTimeout"] == 30 and c["portMappings"][0]["containerPort"] == 8080
    assert "/readyz" in c["healthCheck"]["command"][-1] and c["healthCheck"]["startPeriod"] == 60
    assert c["logConfiguration"] == {"logDriver": "awslogs", "options": {
        "awslogs-group": "/mlship/iris", "awslogs-region": REGION, "awslogs-stream-prefix": "mlship"}}
    assert c["environment"] == [{"name": "PORT", "value": "8080"}, {"name": "LOG_LEVEL", "value": "info"}]
    assert c["secrets"] == [{"name": "MLSHIP_API_KEYS",
                             "valueFrom": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:keys"}]
    assert {"key": "mlship:service", "value": "iris"} in td["tags"]
    assert {"key": "mlship:model-version", "value": "v1"} in td["tags"]
    assert task_differences(td, td) == []
    other = task_definition(target.opts, target.names, image=image[:-1] + "b", region=REGION, execution_role=ROLE,
                            version="v2", ready_timeout_s=60)
    assert task_differences(other, td) == ["image"]  # the version tag alone changes nothing that runs


def test_plan_is_pure(iris_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Aws, "session", property(lambda self: pytest.fail("plan() must not open a session")))
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    target = EcsTarget(load_project(iris_dir), {"region": REGION, "cpu": 1024, "memory": 2048, "desired_count": 2,
                                                "public": True})
    text = "\n".join(target.plan("iris:v9"))
    assert "ECR repository iris (scan on push, tagged) if missing" in text
    assert f"push iris:v9 to <account>.dkr.ecr.{REGION}.amazonaws.com/iris:v9 (Docker login from " \
           "ecr:GetAuthorizationToken" in text
    assert "image iris@sha256:<digest of the push> (by digest), cpu 1024, memory 2048 MiB, port 8080, " \
           "stopTimeout 30s, awslogs to /mlship/iris" in text
    assert "role mlship-iris-exec (created: trusts ecs-tasks.amazonaws.com" in text
    assert "internet-facing Application Load Balancer mlship-iris" in text and "deregistration delay 8s" in text
    assert "2 task(s), deploymentCircuitBreaker enable + rollback" in text
    assert "tagged mlship:service=iris, mlship:managed-by=mlship" in text
    assert "auto scaling" not in text
    scaled = EcsTarget(load_project(iris_dir), {"min_count": 1, "max_count": 4, "scale_on": "memory"})
    assert "auto scaling between 1 and 4 tasks, target tracking memory at 60" in "\n".join(scaled.plan("iris:v9"))
    assert "application-autoscaling:PutScalingPolicy" in needed_actions(scaled.opts)
    assert "application-autoscaling:PutScalingPolicy" not in needed_actions(target.opts)
    internal = "\n".join(EcsTarget(load_project(iris_dir), {"execution_role_arn": ROLE}).plan("iris:v9"))
    assert "internal Application Load Balancer" in internal and f"execution role: {ROLE}" in internal
    assert "<your AWS region" in internal


# --- preflight against moto --------------------------------------------------------------------------------
def test_preflight_passes_fast(iris_dir: Path, aws: MotoServer) -> None:
    target = EcsTarget(load_project(iris_dir), {})
    mark = aws.mark()
    started = time.perf_counter()
    checks = target.preflight()
    took = time.perf_counter() - started
    assert [(c.name, c.ok) for c in checks] == [("region", True), ("credentials", True), ("network", True),
                                                ("permissions", True)], checks
    assert checks[1].detail == "arn:aws:sts::123456789012:user/moto (account 123456789012)"
    assert checks[2].detail.startswith("default VPC vpc-") and checks[2].detail.endswith("default subnets")
    assert checks[3].detail == f"{len(needed_actions(target.opts))} actions the deploy needs are allowed"
    assert aws.since(mark, mutating=True) == []  # read-only
    simulated = aws.last("SimulatePrincipalPolicy")
    assert simulated is not None and simulated["PolicySourceArn"] == "arn:aws:sts::123456789012:user/moto"
    assert took < 5, f"preflight took {took:.2f}s"
    print(f"\necs preflight against moto: {took:.3f}s")


def test_preflight_names_a_denied_action_and_the_option_that_avoids_it(iris_dir: Path, aws: MotoServer) -> None:
    aws.denied = {"iam:CreateRole", "ecs:CreateService"}
    [*_, permissions] = EcsTarget(load_project(iris_dir), {}).preflight()
    assert not permissions.ok
    assert permissions.detail == "arn:aws:sts::123456789012:user/moto is denied: ecs:CreateService, iam:CreateRole " \
                                 "(or set targets.ecs.execution_role_arn)"
    assert permissions.fix is not None and permissions.fix.startswith("Grant ecs:CreateService to ")
    assert "or set targets.ecs.execution_role_arn in mlship.yaml" in permissions.fix
    # With a role given, iam:CreateRole is not needed at all.
    aws.denied = {"iam:CreateRole"}
    checks = EcsTarget(load_project(iris_dir), {"execution_role_arn": ROLE}).preflight()
    assert all(c.ok for c in checks), checks
    assert "iam:CreateRole" not in needed_actions(EcsTarget(load_project(iris_dir), {"execution_role_arn": ROLE}).opts)
    # An identity that may not simulate: not checked, not failed.
    aws.simulate_refused = True
    [*_, permissions] = EcsTarget(load_project(iris_dir), {}).preflight()
    assert permissions.ok and permissions.detail.startswith("not checked: iam:SimulatePrincipalPolicy answered "
                                                            "AccessDenied")


def test_preflight_subnets_and_region(iris_dir: Path, aws: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    ec2 = boto3.client("ec2", region_name=REGION)
    default = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    extra = ec2.create_subnet(VpcId=default[0]["VpcId"], CidrBlock="172.31.200.0/24",
                              AvailabilityZone=default[0]["AvailabilityZone"])["Subnet"]["SubnetId"]
    one_zone = [default[0]["SubnetId"], extra]
    two = sorted({s["AvailabilityZone"]: s["SubnetId"] for s in default}.values())[:2]
    checks = {c.name: c for c in EcsTarget(load_project(iris_dir), {"subnets": two}).preflight()}
    assert checks["network"].ok and checks["network"].detail == "2 subnets in 2 zones"
    checks = {c.name: c for c in EcsTarget(load_project(iris_dir), {"subnets": one_zone}
                                           ).preflight()}
    assert not checks["network"].ok and "two Availability Zones" in (checks["network"].fix or "")
    checks = {c.name: c for c in EcsTarget(load_project(iris_dir), {"subnets": ["subnet-0123456789abcdef0",
                                                                               two[0]]}).preflight()}
    assert not checks["network"].ok and "InvalidSubnetID.NotFound" in checks["network"].detail
    monkeypatch.delenv("AWS_REGION")
    [region] = EcsTarget(load_project(iris_dir), {}).preflight()
    assert (region.name, region.ok, region.detail) == ("region", False, "No AWS region is set.")
    assert region.fix is not None and "targets.ecs.region" in region.fix


def test_preflight_without_credentials(iris_dir: Path, aws: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    mark = aws.mark()
    checks = EcsTarget(load_project(iris_dir), {}).preflight()
    assert [(c.name, c.ok) for c in checks] == [("region", True), ("credentials", False)]
    assert checks[1].detail == "No AWS credentials found." and "aws configure" in (checks[1].fix or "")
    assert aws.since(mark) == []  # boto3 refused before any request


def test_a_failed_preflight_stops_the_deploy_before_any_build(tmp_path: Path, iris_dir: Path, aws: MotoServer,
                                                              base_image_env: str) -> None:
    aws.denied = {"iam:CreateRole"}
    project = make_project(iris_dir, tmp_path / "p", ecs={})
    mark = aws.mark()
    with pytest.raises(PreflightError) as info:
        deploy(project, target="ecs")
    report = info.value.report
    failed = [c for c in report.checks if not c.ok]
    assert [c.name for c in failed] == ["permissions"] and "iam:CreateRole" in failed[0].detail
    assert not (project.root / ".mlship" / "build").exists()  # nothing was built
    assert aws.since(mark, mutating=True) == []
    assert preflight(project, target="ecs").ok is False


def test_cli_dry_run_prints_the_plan_without_credentials(tmp_path: Path, iris_dir: Path, base_image_env: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    folder = tmp_path / "dry"
    make_project(iris_dir, folder, ecs={"region": REGION, "public": True})
    result = CliRunner().invoke(app, ["deploy", "--target", "ecs", "--dry-run", "-f", str(folder)])
    assert result.exit_code == 4, result.output
    out = result.stdout
    assert "FAILED credentials: No AWS credentials found." in out
    assert "1. build iris:" in out and "2. test iris:" in out
    assert "ECR repository iris (scan on push, tagged) if missing" in out
    assert "internet-facing Application Load Balancer mlship-iris" in out
    assert "deploymentCircuitBreaker enable + rollback" in out
    assert "dry run: nothing was built or deployed" in out


def test_nothing_deployed(iris_dir: Path, aws: MotoServer) -> None:
    """status, logs, rollback and destroy of a service that was never deployed: read-only, clear answers."""
    target = EcsTarget(load_project(iris_dir), {})
    mark = aws.mark()
    status = target.status()
    assert (status.state, status.url, status.image, status.history) == ("not deployed", None, None, [])
    with pytest.raises(TargetError) as info:
        target.logs(tail=10)
    assert info.value.message == "No log group /mlship/iris: nothing was deployed for `iris`."
    with pytest.raises(TargetError) as info:
        target.rollback(lambda _line: None)
    assert info.value.message == "Nothing is deployed for `iris` on ECS."
    assert target.destroy() == []
    assert aws.since(mark, mutating=True) == []
    target.close()


def test_a_resource_mlship_did_not_make_is_never_touched(iris_dir: Path, aws: MotoServer) -> None:
    """A role under mlship's name without mlship's tags stops the deploy, and destroy leaves it."""
    import boto3

    iam = boto3.client("iam", region_name=REGION)
    iam.create_role(RoleName="mlship-iris-exec", AssumeRolePolicyDocument="{}", Tags=[{"Key": "team", "Value": "x"}])
    try:
        target = EcsTarget(load_project(iris_dir), {})
        with pytest.raises(TargetError) as info:
            resources.ensure_role(target.aws, target.names, {}, lambda _line: None)
        assert info.value.message.startswith("IAM role mlship-iris-exec exists but mlship did not create it for "
                                             "`iris`")
        assert target.destroy() == []
        assert iam.get_role(RoleName="mlship-iris-exec")["Role"]["RoleName"] == "mlship-iris-exec"
        target.close()
    finally:
        iam.delete_role(RoleName="mlship-iris-exec")
