"""Auto scaling follows the options. Interrupted ecs deploys converge: a kill (KeyboardInterrupt) right after each
mutating step of a first deploy (with a load balancer of its own, and behind your listener), then a re-run: one of
each resource, nothing tagged left after destroy. Transient
AWS errors are retried; a denied action fails at once and names what avoids it; a first deploy that fails removes
its service. moto in server mode, the test-side agent, the real boto3 client (tests/emulators/ecs_fixtures.py).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from emulators import ecs_fixtures
from emulators.ecs_agent import EcsAgent
from emulators.ecs_fixtures import ONE_OF_EACH, REGION, inventory, predict, tagged_left
from emulators.ecs_moto import MotoServer
from mlship.errors import TargetError
from mlship.targets.ecs import EcsTarget

# the shared fixtures (tests/emulators/ecs_fixtures.py), by name
agent = ecs_fixtures.agent
aws = ecs_fixtures.aws
ecs_env = ecs_fixtures.ecs_env
fresh_target = ecs_fixtures.fresh_target
new_target = ecs_fixtures.new_target
moto = ecs_fixtures.moto
user_listener = ecs_fixtures.user_listener
v1_image = ecs_fixtures.v1_image
broken_image = ecs_fixtures.broken_image

STEPS = ["CreateRepository", "CreateLogGroup", "PutRetentionPolicy", "CreateRole", "AttachRolePolicy",
         "CreateSecurityGroup", "AuthorizeSecurityGroupIngress", "CreateLoadBalancer", "CreateTargetGroup",
         "ModifyTargetGroupAttributes", "CreateListener", "CreateCluster", "RegisterTaskDefinition", "CreateService"]


class Interrupt:
    """A client factory whose clients raise KeyboardInterrupt right after ``action`` succeeded (a Ctrl-C, or a
    kill, at that step)."""

    def __init__(self, action: str) -> None:
        self.action, self.fired = action, False

    def client(self, name: str) -> Any:
        import boto3

        client = boto3.Session(region_name=REGION).client(name)
        client.meta.events.register("after-call.*.*", self._after)
        return client

    def _after(self, model: Any, **_kwargs: Any) -> None:
        if model.name == self.action and not self.fired:
            self.fired = True
            raise KeyboardInterrupt(f"interrupted right after {model.name}")


def test_a_clean_first_deploy_makes_each_step_once(fresh_target: EcsTarget, v1_image: str, agent: EcsAgent,
                                                  ecs_env: MotoServer) -> None:
    """The steps the interrupt matrix below cuts after are exactly the mutating calls of a first deploy."""
    mark = ecs_env.mark()
    steps: list[tuple[float, str]] = []
    started = time.monotonic()
    deployed = fresh_target.deploy(v1_image, lambda line: steps.append((time.monotonic() - started, line)))
    total = time.monotonic() - started
    assert [c[1] for c in ecs_env.since(mark, mutating=True) if c[1] != "CreateCluster"] == \
        [s for s in STEPS if s != "CreateCluster"]  # the cluster is shared: made by the first deploy of a run
    assert inventory(fresh_target.service) == ONE_OF_EACH, "\n".join(tagged_left(fresh_target.service))
    assert predict(agent.url(deployed.url or "")).status_code == 200
    pushed = next(t for t, line in steps if line.startswith("pushed "))
    asked = next(t for t, line in steps if line.startswith("creating ECS service"))
    print(f"\necs first deploy on moto: push {pushed:.2f}s, resources {asked - pushed:.2f}s, rollout "
          f"{total - asked:.2f}s, total {total:.2f}s")


@pytest.mark.parametrize("step", STEPS)
def test_an_interrupted_deploy_converges_with_no_orphans(step: str, fresh_target: EcsTarget, v1_image: str,
                                                         agent: EcsAgent, monkeypatch: pytest.MonkeyPatch,
                                                         ecs_env: MotoServer) -> None:
    if step == "CreateCluster":  # the cluster only goes with the last service in it: start without one
        fresh_target.aws.call("x", "ecs", "describe_clusters", clusters=["mlship"])
        for arn in fresh_target.aws.call("x", "ecs", "list_services", cluster="mlship")["serviceArns"]:
            assert fresh_target.aws.call("x", "ecs", "describe_services", cluster="mlship",
                                         services=[arn])["services"][0]["status"] == "INACTIVE"
        fresh_target.aws.call("x", "ecs", "delete_cluster", missing=("ClusterNotFoundException",), cluster="mlship")
    interrupt = Interrupt(step)
    with monkeypatch.context() as patched:
        patched.setattr(EcsTarget, "client_factory", interrupt.client)
        fresh_target.close()  # the next calls make their clients with the factory
        with pytest.raises(KeyboardInterrupt):
            fresh_target.deploy(v1_image, lambda _line: None)
    assert interrupt.fired
    fresh_target.close()
    again = fresh_target.deploy(v1_image, lambda _line: None)  # run again: converges
    assert predict(agent.url(again.url or "")).headers["x-model-version"] == again.version
    assert inventory(fresh_target.service) == ONE_OF_EACH  # one of each: no orphans
    fresh_target.destroy()
    assert tagged_left(fresh_target.service) == []


#: The steps a deploy behind your listener makes in place of the load balancer's.
LISTENER_STEPS = ["CreateTargetGroup", "ModifyTargetGroupAttributes", "CreateRule"]
BEHIND_A_LISTENER = sorted([*(k for k in ONE_OF_EACH if k != "load balancer"), "listener rule"])


@pytest.mark.parametrize("step", LISTENER_STEPS)
def test_an_interrupted_deploy_behind_your_listener_converges(step: str, user_listener: dict[str, str],
                                                              new_target: Any, v1_image: str, agent: EcsAgent,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              ecs_env: MotoServer) -> None:
    import boto3

    target = new_target(listener_arn=user_listener["listener"], listener_rule={"path": "/x"})
    interrupt = Interrupt(step)
    with monkeypatch.context() as patched:
        patched.setattr(EcsTarget, "client_factory", interrupt.client)
        with pytest.raises(KeyboardInterrupt):
            target.deploy(v1_image, lambda _line: None)
    assert interrupt.fired
    target.close()
    steps: list[str] = []
    target.deploy(v1_image, steps.append)  # run again: converges
    assert f"smoke test passed: 1 example(s) via http://{user_listener['dns']}/x" in steps
    assert inventory(target.service) == BEHIND_A_LISTENER  # one of each: no orphans
    rules = boto3.client("elbv2", region_name=REGION).describe_rules(ListenerArn=user_listener["listener"])["Rules"]
    assert [r["Priority"] for r in rules] == ["1", "default"]
    target.destroy()
    assert tagged_left(target.service) == []


def test_transient_errors_are_retried_and_a_denied_action_fails_fast(fresh_target: EcsTarget, v1_image: str,
                                                                     agent: EcsAgent, ecs_env: MotoServer) -> None:
    ecs_env.fail_next("CreateRole", "AccessDenied", 403)
    mark = ecs_env.mark()
    with pytest.raises(TargetError) as info:
        fresh_target.deploy(v1_image, lambda _line: None)
    name = fresh_target.service
    assert info.value.message == f"create role mlship-{name}-exec: permission denied: AccessDenied: injected by the " \
        "test: AccessDenied\nRemoved what this first deploy made: log group " \
        f"/mlship/{name}, ECR repository {name} and its images."
    assert info.value.fix is not None and "or set targets.ecs.execution_role_arn" in info.value.fix
    assert [c[1] for c in ecs_env.since(mark)].count("CreateRole") == 1  # no retry of a 4xx
    fresh_target.close()
    ecs_env.fail_next("CreateLoadBalancer", "ServiceUnavailable", 503, times=2)
    ecs_env.fail_next("RegisterTaskDefinition", "ThrottlingException", 400)
    mark = ecs_env.mark()
    deployed = fresh_target.deploy(v1_image, lambda _line: None)
    assert predict(agent.url(deployed.url or "")).status_code == 200
    actions = [c[1] for c in ecs_env.since(mark)]
    assert actions.count("CreateLoadBalancer") == 3 and actions.count("RegisterTaskDefinition") == 2
    assert inventory(fresh_target.service) == ONE_OF_EACH


def test_a_first_deploy_that_fails_removes_what_it_made(fresh_target: EcsTarget, broken_image: str,
                                                        agent: EcsAgent, ecs_env: MotoServer) -> None:
    """Nothing to fall back to: the service and everything this deploy made go (no task keeps failing)."""
    with pytest.raises(TargetError) as info:
        fresh_target.deploy(broken_image, lambda _line: None)
    message, name = info.value.message, fresh_target.service
    assert message.startswith(f"Revision mlship-{name}:1 of {name} failed: ")
    assert "Essential container in task exited (exit code 1)" in message
    assert f"\nRemoved what this first deploy made: ECS service " \
           f"mlship/{name}, task definition revision mlship-{name}:1, load balancer mlship-{name} and its " \
           f"listener, target group mlship-{name}, security group mlship-{name}, log group /mlship/{name}, " \
           f"execution role mlship-{name}-exec, ECR repository {name} and its images" in message, message
    assert fresh_target.status().state == "not deployed"
    assert not [t for t in agent.tasks.values() if t.service == name]
    assert tagged_left(name) == []


def test_auto_scaling_follows_the_options(new_target: Any, v1_image: str, agent: EcsAgent, ecs_env: MotoServer,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    scaler = boto3.client("application-autoscaling", region_name=REGION)
    target = new_target(min_count=1, max_count=3, scale_on="requests", scale_target=500)
    rid = f"service/mlship/{target.service}"
    deployed = target.deploy(v1_image, lambda _line: None)
    assert predict(agent.url(deployed.url or "")).status_code == 200
    [scalable] = scaler.describe_scalable_targets(ServiceNamespace="ecs", ResourceIds=[rid])["ScalableTargets"]
    assert (scalable["MinCapacity"], scalable["MaxCapacity"]) == (1, 3)
    [policy] = scaler.describe_scaling_policies(ServiceNamespace="ecs", ResourceId=rid)["ScalingPolicies"]
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == 500 and config["PredefinedMetricSpecification"]["PredefinedMetricType"] == \
        "ALBRequestCountPerTarget"
    label = config["PredefinedMetricSpecification"]["ResourceLabel"]
    assert label.startswith(f"app/mlship-{target.service}/") and f"/targetgroup/mlship-{target.service}/" in label

    mark = ecs_env.mark()
    assert not target.deploy(v1_image, lambda _line: None).changed
    assert ecs_env.since(mark, mutating=True) == []

    # Another target value: one call; no min/max any more: the scaling goes.
    project = target.project
    for options, calls in (({"min_count": 1, "max_count": 3, "scale_on": "cpu", "scale_target": 70},
                            ["PutScalingPolicy"]), ({}, ["DeregisterScalableTarget"])):
        changed = EcsTarget(project, options)
        mark = ecs_env.mark()
        changed.deploy(v1_image, lambda _line: None)
        changed.close()
        assert [c[1] for c in ecs_env.since(mark, mutating=True)] == calls
    assert scaler.describe_scalable_targets(ServiceNamespace="ecs", ResourceIds=[rid])["ScalableTargets"] == []
