"""The service behind your own listener (``listener_arn``): instead of a load balancer of its own, mlship adds a
target group and one listener rule to it, with the conditions of ``listener_rule`` (host header and/or path prefix;
a path prefix is stripped by the rule's URL rewrite, so the server sees ``/predict``). The rule is found again as
the one that forwards to the service's target group, and checked by its tags; the listener and its load balancer
are yours: read, never changed, and left by destroy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlship.errors import TargetError
from mlship.targets.base import Progress
from mlship.targets.ecs.api import Aws
from mlship.targets.ecs.options import ListenerRule
from mlship.targets.ecs.resources import (
    Network,
    Route,
    elb_tags,
    ensure_target_group,
    find_target_group,
    metric_label,
    not_ours,
)
from mlship.targets.ecs.spec import Names, key_value, owned, rule_text

MAX_PRIORITY = 50000


@dataclass(frozen=True)
class Listener:
    """Your listener and its load balancer, as read (DescribeListeners, DescribeLoadBalancers)."""

    arn: str
    protocol: str
    port: int
    lb_arn: str
    lb_name: str
    dns: str
    vpc: str
    internal: bool
    security_groups: list[str]


def lookup(aws: Aws) -> Listener:
    """Your listener and its load balancer; TargetError when either is missing."""
    arn = str(aws.opts.listener_arn)
    found = aws.call("describe your listener", "elbv2", "describe_listeners",
                     action="elasticloadbalancing:DescribeListeners", missing=("ListenerNotFound",),
                     ListenerArns=[arn])
    if not found or not found["Listeners"]:
        raise TargetError(f"Listener {arn} does not exist (in {aws.region}).",
                          fix="Set targets.ecs.listener_arn to a listener of an Application Load Balancer in this "
                          "region (`aws elbv2 describe-listeners --load-balancer-arn ...`).")
    li = found["Listeners"][0]
    lbs = aws.call("describe your load balancer", "elbv2", "describe_load_balancers",
                   action="elasticloadbalancing:DescribeLoadBalancers", LoadBalancerArns=[li["LoadBalancerArn"]])
    lb = lbs["LoadBalancers"][0]
    if lb.get("Type", "application") != "application":
        raise TargetError(f"Listener {arn} belongs to a {lb['Type']} load balancer.",
                          why="Listener rules with host and path conditions exist on Application Load Balancers only.",
                          fix="Give the listener of an Application Load Balancer in targets.ecs.listener_arn.")
    return Listener(arn=arn, protocol=str(li.get("Protocol", "HTTP")), port=int(li["Port"]),
                    lb_arn=str(lb["LoadBalancerArn"]), lb_name=str(lb["LoadBalancerName"]), dns=str(lb["DNSName"]),
                    vpc=str(lb["VpcId"]), internal=lb.get("Scheme") == "internal",
                    security_groups=[str(g) for g in lb.get("SecurityGroups", [])])


def check_vpc(listener: Listener, vpc: str, subnets_given: bool) -> None:
    if listener.vpc != vpc:
        raise TargetError(
            f"Your load balancer {listener.lb_name} is in {listener.vpc}, the tasks' subnets in {vpc}.",
            why="A target group forwards only to targets in its load balancer's VPC.",
            fix=("Set targets.ecs.subnets to subnets of " if subnets_given else "Set targets.ecs.subnets (the default "
                 "VPC's are used now) to subnets of ") + f"{listener.vpc}, in two Availability Zones.")


def conditions(rule: ListenerRule) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if rule.host:
        found.append({"Field": "host-header", "HostHeaderConfig": {"Values": [rule.host]}})
    if rule.path:
        found.append({"Field": "path-pattern", "PathPatternConfig": {"Values": [f"{rule.path}/*"]}})
    return found


def transforms(rule: ListenerRule) -> list[dict[str, Any]]:
    """The URL rewrite that strips the path prefix (none without a path)."""
    if not rule.path:
        return []
    regex = "^" + rule.path.replace(".", "\\.") + "/(.*)$"
    return [{"Type": "url-rewrite", "UrlRewriteConfig": {"Rewrites": [{"Regex": regex, "Replace": "/$1"}]}}]


def _view(found: list[dict[str, Any]]) -> list[tuple[str, tuple[str, ...]]]:
    """Conditions as (field, values), whichever way they are spelled."""
    out = []
    for c in found:
        config = c.get("HostHeaderConfig") or c.get("PathPatternConfig") or {}
        out.append((str(c.get("Field")), tuple(sorted(config.get("Values") or c.get("Values") or []))))
    return sorted(out)


def forwards_to(rule: dict[str, Any], tg_arn: str) -> bool:
    for action in rule.get("Actions", []):
        groups = [g.get("TargetGroupArn") for g in (action.get("ForwardConfig") or {}).get("TargetGroups", [])]
        if action.get("Type") == "forward" and tg_arn in [action.get("TargetGroupArn"), *groups]:
            return True
    return False


def rules(aws: Aws, listener_arn: str) -> list[dict[str, Any]]:
    found = aws.call("describe the listener's rules", "elbv2", "describe_rules",
                     action="elasticloadbalancing:DescribeRules", missing=("ListenerNotFound",),
                     ListenerArn=listener_arn)
    return list((found or {}).get("Rules", []))


def find_rule(aws: Aws, listener_arn: str, tg_arn: str) -> dict[str, Any] | None:
    return next((r for r in rules(aws, listener_arn) if not r.get("IsDefault") and forwards_to(r, tg_arn)), None)


def _priority(aws: Aws, existing: list[dict[str, Any]], wanted: int | None) -> int:
    taken = {int(r["Priority"]): r for r in existing if str(r.get("Priority", "")).isdigit()}
    if wanted is None:
        free = max(taken, default=0) + 1
        if free > MAX_PRIORITY:
            raise TargetError(f"Your listener's rules use priority {MAX_PRIORITY} already.",
                              fix="Set targets.ecs.listener_rule.priority to a free one.")
        return free
    if wanted in taken:
        raise TargetError(f"Priority {wanted} is taken on your listener by rule {taken[wanted]['RuleArn']}.",
                          fix="Set targets.ecs.listener_rule.priority to a free one, or leave it out (mlship then "
                          "takes the one after every rule the listener has).")
    return wanted


def ensure_rule(aws: Aws, n: Names, listener: Listener, tg_arn: str, tags: dict[str, str],
                progress: Progress) -> None:
    """The rule that forwards ``listener_rule``'s requests to the target group: created, or changed where it
    differs from the options."""
    rule_opts = aws.opts.listener_rule
    assert rule_opts is not None  # the options require it with listener_arn
    existing = rules(aws, listener.arn)
    mine = next((r for r in existing if not r.get("IsDefault") and forwards_to(r, tg_arn)), None)
    wanted_conditions, wanted_transforms = conditions(rule_opts), transforms(rule_opts)
    action = [{"Type": "forward", "TargetGroupArn": tg_arn}]
    if mine is None:
        priority = _priority(aws, existing, rule_opts.priority)
        progress(f"adding a rule to your listener (priority {priority}: {rule_text(rule_opts)}) -> "
                 f"{n.target_group}")
        extra: dict[str, Any] = {"Transforms": wanted_transforms} if wanted_transforms else {}
        aws.call("create the listener rule", "elbv2", "create_rule", action="elasticloadbalancing:CreateRule",
                 ListenerArn=listener.arn, Priority=priority, Conditions=wanted_conditions, Actions=action,
                 Tags=key_value(tags), **extra)
        return
    if not owned(elb_tags(aws, mine["RuleArn"]), n.service):
        raise not_ours("listener rule", mine["RuleArn"], n.service)
    have_transforms = mine.get("Transforms") or []
    if _view(mine.get("Conditions", [])) != _view(wanted_conditions) or have_transforms != wanted_transforms:
        progress(f"changing the listener rule to {rule_text(rule_opts)}")
        rewrite: dict[str, Any] = {"Transforms": wanted_transforms} if wanted_transforms else {"ResetTransforms": True}
        aws.call("modify the listener rule", "elbv2", "modify_rule", action="elasticloadbalancing:ModifyRule",
                 RuleArn=mine["RuleArn"], Conditions=wanted_conditions, Actions=action, **rewrite)
    if rule_opts.priority is not None and str(mine.get("Priority")) != str(rule_opts.priority):
        others = [r for r in existing if r is not mine]
        priority = _priority(aws, others, rule_opts.priority)
        aws.call("set the listener rule's priority", "elbv2", "set_rule_priorities",
                 action="elasticloadbalancing:SetRulePriorities",
                 RulePriorities=[{"RuleArn": mine["RuleArn"], "Priority": priority}])


def ensure(aws: Aws, n: Names, listener: Listener, net: Network, tags: dict[str, str], drain_s: int,
           progress: Progress) -> Route:
    """The target group and the rule on your listener; the service's Route."""
    check_vpc(listener, net.vpc, bool(aws.opts.subnets))
    tg_arn = ensure_target_group(aws, n, net.vpc, tags, drain_s, progress)
    ensure_rule(aws, n, listener, tg_arn, tags, progress)
    return route(aws, listener, tg_arn)


def route(aws: Aws, listener: Listener, tg_arn: str) -> Route:
    rule = aws.opts.listener_rule
    scheme = "https" if listener.protocol == "HTTPS" else "http"
    port = "" if listener.port == {"http": 80, "https": 443}[scheme] else f":{listener.port}"
    prefix = (rule.path or "") if rule else ""
    host = rule.host if rule and rule.host and not rule.host.startswith("*.") else None
    base = f"{scheme}://{listener.dns}{port}{prefix}"
    return Route(tg_arn=tg_arn, url=f"{scheme}://{host}{port}{prefix}" if host else base, base=base, host=host,
                 internal=listener.internal, label=metric_label(listener.lb_arn, tg_arn))


def current_route(aws: Aws, n: Names) -> Route | None:
    """The Route of a deployed service (status, rollback), read only; None when the target group is gone."""
    tg = find_target_group(aws, n)
    if tg is None:
        return None
    return route(aws, lookup(aws), str(tg["TargetGroupArn"]))


def remove(aws: Aws, n: Names) -> list[str]:
    """The rule mlship added to your listener (the target group goes with the rest); says what it left."""
    listener_arn = str(aws.opts.listener_arn)
    left = [f"kept: your listener {listener_arn} and its load balancer"]
    tg = find_target_group(aws, n)
    mine = find_rule(aws, listener_arn, str(tg["TargetGroupArn"])) if tg is not None else None
    if mine is None or not owned(elb_tags(aws, mine["RuleArn"]), n.service):
        return left
    aws.call("delete the listener rule", "elbv2", "delete_rule", action="elasticloadbalancing:DeleteRule",
             RuleArn=mine["RuleArn"])
    return [f"listener rule {mine['RuleArn'].rpartition('/')[2]} (priority {mine.get('Priority')}) on your "
            "listener", *left]
