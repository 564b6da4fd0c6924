"""status / logs / rollback of the ``ecs`` target (destroy: ``teardown``). Everything is found by its name and
checked by its tags (``mlship:service``).

status reads the service's events (why ECS is waiting, newest first) and, when the deployment circuit breaker
rolled the last deployment back, names that deployment: its task definition revision and why its tasks stopped
(ECS keeps stopped tasks for about an hour; after that the event's text is all there is).
"""

from __future__ import annotations

import re
from typing import Any

from mlship.artifacts.provenance import ECS, recorded_text
from mlship.errors import TargetError
from mlship.targets.base import Deployment, Progress, TargetStatus
from mlship.targets.ecs import listener, resources, service
from mlship.targets.ecs.api import Aws
from mlship.targets.ecs.spec import VERSION_TAG, Names

EVENTS = 5  # the service's latest events status shows
_FAILED = re.compile(r"\(deployment (ecs-svc/\d+)\) deployment failed")
_ROLLED_BACK_TO = re.compile(r"rolling back to deployment (ecs-svc/\d+)")
_COMPLETED = re.compile(r"\(deployment (ecs-svc/\d+)\) deployment completed")


def _version(td: dict[str, Any]) -> str:
    return next((t["value"] for t in td.get("tags", []) if t.get("key") == VERSION_TAG), "?")


def _model(td: dict[str, Any]) -> str | None:
    """The code+model pair the task definition's tags record (None: none recorded, e.g. a revision made before)."""
    return recorded_text({str(t.get("key")): str(t.get("value")) for t in td.get("tags", [])}, ECS)


def _url(aws: Aws, n: Names) -> str | None:
    if aws.opts.listener_arn:
        route = listener.current_route(aws, n)
        return route.url if route else None
    lb = resources.find_load_balancer(aws, n)
    return f"http://{lb['DNSName']}" if lb else None


def _events(current: dict[str, Any]) -> list[str]:
    return [f"{e['createdAt']:%Y-%m-%d %H:%M:%S} {e['message']}" if hasattr(e.get("createdAt"), "strftime")
            else str(e.get("message")) for e in current.get("events", [])[:EVENTS]]


def failed_deployment(aws: Aws, n: Names, current: dict[str, Any]) -> str | None:
    """The deployment the circuit breaker rolled back last, unless a deploy completed since: its revision and why
    its tasks stopped."""
    failed, back_to, completed = None, None, set()
    for event in current.get("events", []):  # newest first
        message = str(event.get("message", ""))
        if found := _COMPLETED.search(message):
            completed.add(found[1])
        elif found := _ROLLED_BACK_TO.search(message):
            back_to = found[1]
        elif found := _FAILED.search(message):
            failed = found[1]
            break
    if failed is None or completed - {back_to}:
        return None
    stopped = [t for t in service.tasks(aws, n, "STOPPED") if t.get("startedBy") == failed]
    if not stopped:
        return f"deployment {failed} was rolled back by the circuit breaker (its stopped tasks are no longer listed)"
    why = "; ".join(sorted({service.stop_reason(t) for t in stopped}))
    revision = str(stopped[0]["taskDefinitionArn"]).rpartition("/")[2]
    return f"revision {revision} (deployment {failed}) was rolled back by the circuit breaker: {why}"


def status(aws: Aws, n: Names) -> TargetStatus:
    current = service.find_service(aws, n)
    if current is None:
        return TargetStatus(url=None, image=None, version=None, state="not deployed", history=[])
    td = service.task_definition(aws, current["taskDefinition"])
    history = []
    for arn in service.revisions(aws, n)[:5]:
        other = td if arn == td["taskDefinitionArn"] else service.task_definition(aws, arn)
        model, mark = _model(other), ", serving" if arn == td["taskDefinitionArn"] else ""
        history.append(f"{arn.rpartition('/')[2]} ({_version(other)}{mark})" + (f": {model}" if model else ""))
    tg = resources.find_target_group(aws, n)
    healthy = len(service.healthy_targets(aws, tg["TargetGroupArn"])) if tg else 0
    primary: dict[str, Any] = next((d for d in current.get("deployments", []) if d.get("status") == "PRIMARY"), {})
    rollout = primary.get("rolloutState", "?")
    state = (f"{'serving' if rollout == 'COMPLETED' and healthy else rollout.lower()}: "
             f"{current.get('runningCount', 0)}/{current.get('desiredCount', 0)} tasks running, {healthy} healthy "
             "in the target group")
    return TargetStatus(url=_url(aws, n), image=td["containerDefinitions"][0]["image"], version=_version(td),
                        state=state, history=history, ready=rollout == "COMPLETED" and healthy > 0,
                        events=_events(current), failed=failed_deployment(aws, n, current), serving=_model(td))


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
                      previous=str(before["containerDefinitions"][0]["image"]), digest=image.partition("@")[2] or None,
                      serving=_model(td))
