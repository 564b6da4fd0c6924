"""The ecs target behind the user's own listener (``listener_arn`` + ``listener_rule``): the options and the plan,
the preflight (the listener exists, in the subnets' VPC), and two services behind one listener, each answering its
own requests (host header; path prefix, stripped by the rule's URL rewrite), with moto in server mode, the test-side
agent (whose load balancer front end routes by the listener's rules: tests/emulators/ecs_alb.py) and the real boto3
client. Destroy removes the rule and the target group and leaves the listener and its load balancer.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulators import ecs_fixtures
from emulators.ecs_agent import EcsAgent
from emulators.ecs_alb import TARGET_HEADER
from emulators.ecs_fixtures import IRIS_ROW, REGION, tagged_left
from emulators.ecs_moto import MotoServer
from mlship.contract_io import load_project
from mlship.errors import ContractError
from mlship.targets.ecs import EcsTarget
from mlship.targets.ecs.preflight import needed_actions

# the shared fixtures (tests/emulators/ecs_fixtures.py), by name
agent = ecs_fixtures.agent
aws = ecs_fixtures.aws
ecs_env = ecs_fixtures.ecs_env
moto = ecs_fixtures.moto
new_target = ecs_fixtures.new_target
user_listener = ecs_fixtures.user_listener
v1_image = ecs_fixtures.v1_image

LISTENER = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/shared/50dc6c495c0c9188/f2f7dc8efc522ab2"


@pytest.mark.parametrize(("options", "expected"), [
    ({"listener_arn": LISTENER}, "targets.ecs.listener_rule: with listener_arn, say which requests go to the "
                                 "service: `listener_rule: {host: api.example.com}` and/or `{path: /iris}`"),
    ({"listener_arn": LISTENER, "listener_rule": {}}, "targets.ecs.listener_rule: a rule needs a host, a path or "
                                                      "both: without a condition it would take every request"),
    ({"listener_rule": {"host": "api.example.com"}}, "targets.ecs.listener_rule: listener_rule goes with "
                                                     "listener_arn (your listener)"),
    ({"listener_arn": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/x/1",
      "listener_rule": {"path": "/iris"}}, "targets.ecs.listener_arn: expected an Application Load Balancer "
                                           "listener ARN"),
    ({"listener_arn": LISTENER, "listener_rule": {"path": "/iris/*/x"}}, "targets.ecs.listener_rule.path: "
                                                                         "expected a path prefix such as /iris"),
    ({"listener_arn": LISTENER, "listener_rule": {"host": "not a host"}}, "targets.ecs.listener_rule.host: "
                                                                          "expected a host name"),
    ({"listener_arn": LISTENER, "listener_rule": {"path": "/x", "priority": 0}}, "targets.ecs.listener_rule."
                                                                                 "priority: Input should be greater"),
    ({"listener_arn": LISTENER, "listener_rule": {"host": "a.example.com"}, "public": True},
     "targets.ecs.listener_rule: public applies to a load balancer mlship creates"),
])
def test_listener_options_are_checked_when_mlship_yaml_is_read(iris_dir: Path, options: dict[str, Any],
                                                               expected: str) -> None:
    with pytest.raises(ContractError) as info:
        EcsTarget(load_project(iris_dir), options)
    assert expected in info.value.message, info.value.message


def test_the_plan_names_the_rule_and_leaves_the_listener(iris_dir: Path) -> None:
    target = EcsTarget(load_project(iris_dir), {"listener_arn": LISTENER, "listener_rule": {
        "host": "API.example.com", "path": "/iris/*"}})
    assert target.opts.listener_rule is not None and target.opts.listener_rule.path == "/iris"  # /* is implied
    text = "\n".join(target.plan("iris:v9"))
    assert (f"your listener {LISTENER}: target group mlship-iris (ip, HTTP 8080, health check /readyz, "
            "deregistration delay 8s), and a rule (priority after every rule it has, tagged) forwarding host "
            "api.example.com and path /iris/* to it (/iris stripped by the rule's URL rewrite); the listener and its "
            "load balancer are read, never changed") in text
    assert "Application Load Balancer mlship-iris" not in text
    actions = needed_actions(target.opts)
    assert "elasticloadbalancing:CreateRule" in actions and "elasticloadbalancing:CreateLoadBalancer" not in actions


def test_preflight_checks_the_listener(iris_dir: Path, aws: MotoServer, user_listener: dict[str, str]) -> None:
    import boto3

    rule = {"host": "a.example.com"}
    checks = EcsTarget(load_project(iris_dir), {"listener_arn": user_listener["listener"],
                                                "listener_rule": rule}).preflight()
    assert [(c.name, c.ok) for c in checks][-2:] == [("listener", True), ("permissions", True)], checks
    assert checks[-2].detail.startswith("HTTP:80 of user-") and "(internet-facing, vpc-" in checks[-2].detail

    missing = user_listener["listener"][:-4] + "0000"
    [listener] = [c for c in EcsTarget(load_project(iris_dir), {"listener_arn": missing,
                                                                "listener_rule": rule}).preflight()
                  if c.name == "listener"]
    assert not listener.ok and listener.detail == f"Listener {missing} does not exist (in {REGION})."

    # A listener whose load balancer is in another VPC than the tasks' subnets.
    ec2, elb = boto3.client("ec2", region_name=REGION), boto3.client("elbv2", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{i}.0/24", AvailabilityZone=f"{REGION}{z}")["Subnet"]
               ["SubnetId"] for i, z in ((1, "a"), (2, "b"))]
    lb = elb.create_load_balancer(Name="other-vpc", Subnets=subnets, Scheme="internal")["LoadBalancers"][0]
    try:
        other = elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80, DefaultActions=[
            {"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "404"}}])["Listeners"][0]["ListenerArn"]
        [listener] = [c for c in EcsTarget(load_project(iris_dir), {"listener_arn": other,
                                                                    "listener_rule": rule}).preflight()
                      if c.name == "listener"]
        assert not listener.ok and listener.detail.startswith(f"Your load balancer other-vpc is in {vpc}, the tasks' "
                                                              "subnets in vpc-")
        assert listener.fix is not None and listener.fix.startswith("Set targets.ecs.subnets (the default VPC's are "
                                                                    f"used now) to subnets of {vpc}")
    finally:
        elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
        for subnet in subnets:
            ec2.delete_subnet(SubnetId=subnet)
        ec2.delete_vpc(VpcId=vpc)


def _answered_by(agent: EcsAgent, reply: httpx.Response) -> str:
    task = reply.headers[TARGET_HEADER]
    return next(t.service for t in agent.tasks.values() if t.arn.endswith(task))


def test_two_services_behind_one_listener(user_listener: dict[str, str], new_target: Any, v1_image: str,
                                          agent: EcsAgent, ecs_env: MotoServer) -> None:
    import boto3

    elb = boto3.client("elbv2", region_name=REGION)
    listener, dns = user_listener["listener"], user_listener["dns"]
    by_host = new_target(listener_arn=listener, listener_rule={"host": "a.example.com"})
    by_path = new_target(listener_arn=listener, listener_rule={"path": "/b"})
    mark = ecs_env.mark()
    steps: list[str] = []
    first = by_host.deploy(v1_image, steps.append)
    second = by_path.deploy(v1_image, steps.append)
    assert (first.url, second.url) == ("http://a.example.com", f"http://{dns}/b")
    assert f"smoke test passed: 1 example(s) via http://{dns}" in steps  # through the listener, Host: a.example.com
    assert f"smoke test passed: 1 example(s) via http://{dns}/b" in steps
    made = [c[1] for c in ecs_env.since(mark, mutating=True)]
    assert made.count("CreateRule") == 2 and made.count("CreateTargetGroup") == 2
    assert "CreateLoadBalancer" not in made and "CreateListener" not in made

    rules = [r for r in elb.describe_rules(ListenerArn=listener)["Rules"] if not r["IsDefault"]]
    assert [r["Priority"] for r in rules] == ["1", "2"]  # each after every rule the listener had
    for rule, target in zip(rules, (by_host, by_path), strict=True):
        tags = elb.describe_tags(ResourceArns=[rule["RuleArn"]])["TagDescriptions"][0]["Tags"]
        assert {"Key": "mlship:service", "Value": target.service} in tags
    assert rules[1]["Transforms"] == [{"Type": "url-rewrite", "UrlRewriteConfig": {"Rewrites": [
        {"Regex": "^/b/(.*)$", "Replace": "/$1"}]}}]
    [group] = boto3.client("ec2", region_name=REGION).describe_security_groups(
        GroupNames=[f"mlship-{by_host.service}"])["SecurityGroups"]
    assert [(p["FromPort"], [g["GroupId"] for g in p["UserIdGroupPairs"]]) for p in group["IpPermissions"]] == \
        [(8080, [user_listener["security_group"]])]  # the tasks' port, from your load balancer only

    # Each request goes to the service its rule names; one no rule takes gets the listener's default answer.
    with httpx.Client(proxy=agent.proxy_url, timeout=10) as client:
        seen: Counter[tuple[str, str]] = Counter()
        for _ in range(6):
            host = client.post(f"http://{dns}/predict", json=IRIS_ROW, headers={"Host": "a.example.com"})
            path = client.post(f"http://{dns}/b/predict", json=IRIS_ROW)
            assert (host.status_code, path.status_code) == (200, 200)
            assert host.json()["label"] == path.json()["label"] == "setosa"
            seen[("host", _answered_by(agent, host))] += 1
            seen[("path", _answered_by(agent, path))] += 1
        assert seen == {("host", by_host.service): 6, ("path", by_path.service): 6}
        assert client.post(f"http://{dns}/predict", json=IRIS_ROW).status_code == 404

    status = by_path.status()
    assert status.url == f"http://{dns}/b" and status.ready and status.failed is None
    mark = ecs_env.mark()
    assert not by_host.deploy(v1_image, steps.append).changed
    assert ecs_env.since(mark, mutating=True) == []

    removed = by_host.destroy()
    assert removed[-2:] == [f"kept: your listener {listener} and its load balancer",
                            "kept: ECS cluster mlship (1 other service(s) in it)"], removed
    assert f"target group mlship-{by_host.service}" in removed
    assert any(r.startswith("listener rule ") and r.endswith("(priority 1) on your listener") for r in removed)
    assert not any(r.startswith("load balancer") for r in removed)
    assert tagged_left(by_host.service) == []
    assert [r["Priority"] for r in elb.describe_rules(ListenerArn=listener)["Rules"]] == ["2", "default"]
    with httpx.Client(proxy=agent.proxy_url, timeout=10) as client:
        assert client.post(f"http://{dns}/b/predict", json=IRIS_ROW).status_code == 200
    by_path.destroy()
    assert [r["Priority"] for r in elb.describe_rules(ListenerArn=listener)["Rules"]] == ["default"]
    assert elb.describe_listeners(ListenerArns=[listener])["Listeners"]  # the listener stays
