"""The ``ecs`` target: push to ECR, run on AWS ECS (Fargate) behind an Application Load Balancer.

State lives in AWS, not in a file: every resource is named from the service and tagged
``mlship:service=<service>``; the task definition family's revisions are the deploy history (each carries the
``mlship:model-version`` tag).

Modules of this package: ``options`` (``targets.ecs``), ``spec`` (names, tags, the task definition, the plan;
pure), ``api`` (session, clients, errors), ``preflight``, ``resources`` (ECR, logs, role, network, load
balancer), ``service`` (cluster, task definitions, the service, the rollout), ``lifecycle`` (status, logs,
rollback, destroy) and ``target``: the deploy policy.

How a deploy switches versions (``EcsTarget.deploy``): ensure the repository, push (the task definition names
the image by digest), ensure the log group, the execution role, the security group and the load balancer; then
register a task definition revision only when the spec differs from the serving one (or reuse the family's
latest revision when it already matches: an interrupted deploy converges); create or update the service with
the deployment circuit breaker on (enable + rollback), and wait until the new deployment is COMPLETED and the
target group reports its tasks healthy. A failed rollout names the revision, the stopped task's reason and its
last log lines; ECS keeps the previous revision serving. Nothing changed: no mutating call at all.
"""

from __future__ import annotations

import math
import os
from typing import Any, ClassVar

from mlship.artifacts.provenance import ECS, record
from mlship.batch.jobs import BatchJob, BatchTarget, JobRun
from mlship.contract_io import Project
from mlship.errors import TargetError
from mlship.reports import Check
from mlship.targets.base import CONTAINER_PORT, Deployment, Progress, Target, TargetStatus, parse_options
from mlship.targets.common import smoke_test
from mlship.targets.ecs import jobs, jobs_spec, lifecycle, listener, resources, scaling, service, teardown
from mlship.targets.ecs.api import Aws, ClientFactory
from mlship.targets.ecs.options import EcsOptions, with_job_queue
from mlship.targets.ecs.spec import (
    STOP_TIMEOUT_S,
    health_start_period,
    names,
    plan_lines,
    tags,
    task_definition,
    task_differences,
)

VERSION_LABEL = "org.opencontainers.image.version"


class EcsTarget(Target, BatchTarget):
    """The service on AWS ECS Fargate (see the module docstring); batch jobs as an AWS Batch array job or RunTask
    fan-out (``jobs``)."""

    name: ClassVar[str] = "ecs"
    poll_s: ClassVar[float] = 5.0  # rollout polling (grows to 5 s)
    rollout_timeout_s: ClassVar[float] = 1200.0
    client_factory: ClassVar[ClientFactory | None] = None  # tests may point every client elsewhere

    def __init__(self, project: Project, options: dict[str, Any]) -> None:
        super().__init__(project, options)
        self.opts = parse_options(EcsOptions, self.name, options)
        self.service = project.contract.name
        grace = self.spec.grace_s
        if grace >= STOP_TIMEOUT_S:
            raise TargetError(
                f"serve.shutdown_grace_s is {grace:g}s, but ECS kills a container {STOP_TIMEOUT_S}s after SIGTERM "
                "(the task definition's stopTimeout).", why="Requests still in flight then would be cut off.",
                fix=f"Set serve.shutdown_grace_s below {STOP_TIMEOUT_S} in mlship.yaml (the default, 8, fits).")
        self.drain_s = max(1, math.ceil(grace))  # the target group's deregistration delay
        self.names = names(self.opts, self.service)
        self.ready_timeout = self.spec.ready_timeout_s
        self._aws: Aws | None = None

    @property
    def aws(self) -> Aws:
        if self._aws is None:
            self._aws = Aws(self.opts, client_factory=type(self).client_factory)
        return self._aws

    def close(self) -> None:
        if self._aws is not None:
            self._aws.close()
            self._aws = None

    # --- preflight, plan, environment --------------------------------------------------------------
    def preflight(self) -> list[Check]:
        from mlship.targets.ecs import preflight

        return preflight.checks(self.opts, type(self).client_factory, artifact=self.spec.fetch_at_start)

    def plan(self, image: str) -> list[str]:
        region = self.opts.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return plan_lines(self.opts, self.names, image=image, region=region, ready_timeout_s=self.ready_timeout,
                          drain_s=self.drain_s, artifact=self.spec.fetch_at_start)

    def runtime_env(self) -> dict[str, str]:
        """For the test gate: PORT and targets.ecs.env. The secrets (targets.ecs.secrets) are injected by ECS from
        Secrets Manager or SSM and are not read here."""
        return {"PORT": str(CONTAINER_PORT), **self.opts.environment()}

    # --- deploy ------------------------------------------------------------------------------------
    def deploy(self, image: str, progress: Progress) -> Deployment:
        """See the module docstring. A deploy that fails removes what it made: all of it when the service did not
        exist before (what an earlier, interrupted deploy made stays for the next), else only the task definition
        revision it registered (the serving revision keeps serving). An interrupt (Ctrl-C, a kill) removes nothing:
        running it again converges."""
        self.aws.created = []
        current = service.find_service(self.aws, self.names)
        if current is not None:
            service.check_owned(current, self.names)
        try:
            return self._deploy(image, current, progress)
        except Exception as exc:
            removed = self._undo(current)
            if not isinstance(exc, TargetError):
                raise
            raise TargetError(exc.message + removed, why=exc.why, fix=exc.fix) from None

    def _deploy(self, image: str, current: dict[str, Any] | None, progress: Progress) -> Deployment:
        from mlship.image import engine

        aws, n, tag_map = self.aws, self.names, tags(self.opts, self.service)
        image_labels = engine.inspect(image).labels
        version = image_labels.get(VERSION_LABEL) or image.rpartition(":")[2]
        repository = resources.ensure_repository(aws, n, tag_map, progress)
        ref = resources.push(aws, image, repository, n, progress)
        progress(f"pushed {ref}")
        resources.ensure_log_group(aws, n, tag_map, self.opts.log_retention_days, progress)
        role = self.opts.execution_role_arn or resources.ensure_role(aws, n, tag_map, progress)
        fetch = self.spec.fetch_at_start  # the task reads its model from S3 with a role that may read it
        task_opts = self.opts if self.opts.task_role_arn or not (fetch or "").startswith("s3://") else \
            self.opts.model_copy(update={"task_role_arn": resources.ensure_task_role(aws, n, tag_map, fetch or "",
                                                                                     progress)})
        yours = listener.lookup(aws) if self.opts.listener_arn else None
        net = resources.ensure_network(aws, n, tag_map, progress, yours.security_groups if yours else None)
        route = (listener.ensure(aws, n, yours, net, tag_map, self.drain_s, progress) if yours is not None else
                 resources.ensure_load_balancer(aws, n, net, tag_map, self.drain_s, progress))
        service.ensure_cluster(aws, n, tag_map, progress)
        desired = task_definition(task_opts, n, image=ref, region=aws.region, execution_role=role, version=version,
                                  ready_timeout_s=self.ready_timeout, provenance=record(image_labels, ECS))
        serving = service.task_definition(aws, current["taskDefinition"]) if current is not None else None
        diff = task_differences(desired, serving) if serving is not None else ["new service"]
        resize = current is not None and not self.opts.scaling and current.get("desiredCount") != \
            self.opts.desired_count
        if current is not None and not diff and not resize and all(d.get("rolloutState") == "COMPLETED" for d in
                                                                   current.get("deployments", [])
                                                                   if d["status"] == "PRIMARY"):
            scaling.ensure(aws, n, tag_map, route.label, progress)
            progress(f"{self.service} already runs this spec ({current['taskDefinition'].rpartition('/')[2]}); "
                     "nothing to update")
            return Deployment(url=route.url, image=ref, version=version, previous=None, changed=False,
                              digest=ref.partition("@")[2] or None)
        task_arn = self._revision(desired, diff, serving, progress)
        if current is None:
            progress(f"creating ECS service {self.service} ({task_arn.rpartition('/')[2]})")
            service.create(aws, n, task_arn, net, route.tg_arn, tag_map, self.opts.desired_count,
                           health_start_period(self.ready_timeout))
        elif diff or resize:
            progress(f"updating ECS service {self.service} to {task_arn.rpartition('/')[2]}"
                     + (f" (changed: {', '.join(diff)})" if diff else f" ({self.opts.desired_count} task(s))"))
            service.update(aws, n, task_arn, None if self.opts.scaling else self.opts.desired_count)
        else:  # an earlier deploy (interrupted, or still rolling out) asked for this already: only wait
            progress(f"{self.service} is already rolling out {task_arn.rpartition('/')[2]}; waiting for it")
        self._wait(task_arn, route.tg_arn, self._count(current), progress)
        if diff:
            self._smoke(route, version, serving, progress)
        scaling.ensure(aws, n, tag_map, route.label, progress)
        previous = (serving["containerDefinitions"][0]["image"]
                    if serving is not None and serving["taskDefinitionArn"] != task_arn else None)
        progress(f"{self.service} serves {task_arn.rpartition('/')[2]} ({version}) at {route.url}"
                 + (f" (load balancer {route.base.partition('://')[2].partition('/')[0]}: point {route.host}'s DNS "
                    "at it)" if route.host else ""))
        return Deployment(url=route.url, image=ref, version=version, previous=previous, changed=True,
                          digest=ref.partition("@")[2] or None)

    def _undo(self, before: dict[str, Any] | None) -> str:
        """After a failed deploy: remove what it made (see ``deploy``); the sentence that says what was removed."""
        aws, n = self.aws, self.names
        made = list(aws.created)
        try:
            now = service.find_service(aws, n)
            if before is None:
                removed = []
                if now is not None:
                    scaling.remove(aws, n)
                    service.delete(aws, n)
                    removed.append(f"ECS service {n.cluster}/{n.service}")
                removed += teardown.undo(aws, n, made)
                return ("\nRemoved what this first deploy made: " + ", ".join(removed)
                        + ".") if removed else ""
            serving = now["taskDefinition"] if now is not None else None
            new = [str(a["taskDefinition"]["taskDefinitionArn"]) for op, a in made
                   if op == "register_task_definition" and a["taskDefinition"]["taskDefinitionArn"] != serving]
            removed = teardown.deregister(aws, n, new)
            return f"\nRemoved the {removed[0]} this deploy registered." if removed else ""
        except TargetError as exc:
            return (f"\nCould not remove what this deploy made: {exc.message} (`mlship destroy --target ecs` removes "
                    "it; a new deploy reuses it).")

    def _smoke(self, route: resources.Route, version: str, serving: dict[str, Any] | None,
               progress: Progress) -> None:
        """Replay the examples through the load balancer; on a failure, the serving revision takes the traffic
        back (a first deploy: the caller removes the service) and TargetError names the failing examples."""
        skipped = self._smoke_skipped(route)
        if skipped:
            progress(f"smoke test skipped: {skipped}")
            return
        headers = {"Host": route.host} if route.host else {}
        serve = self.project.contract.serve
        if serve.auth == "api_key":
            headers["Authorization"] = f"Bearer {self._api_keys()[0]}"
        problems = smoke_test(route.base, list(self.spec.examples), version=version, headers=headers)
        if not problems:
            progress(f"smoke test passed: {len(self.spec.examples)} example(s) via {route.base}")
            return
        where = ""
        if serving is not None:
            back = str(serving["taskDefinitionArn"])
            progress(f"smoke test failed; moving {self.service} back to {back.rpartition('/')[2]}")
            service.update(self.aws, self.names, back, None if self.opts.scaling else self.opts.desired_count)
            self._wait(back, route.tg_arn, self._count(service.find_service(self.aws, self.names)), progress)
            where = f"\nRolled back: revision {back.rpartition('/')[2]} serves again."
        raise TargetError(f"Smoke test of {self.service} failed at {route.base}:\n  " + "\n  ".join(problems) + where,
                          why="The new tasks were healthy (/readyz), but their predictions differ from the examples "
                          "in mlship.yaml.",
                          fix="Run `mlship test` on the image to see every example's result.")

    def _smoke_skipped(self, route: resources.Route) -> str:
        """Why the smoke test cannot run from this machine ("" when it can)."""
        serve = self.project.contract.serve
        if route.internal:
            return ("the load balancer is internal (reachable only inside its VPC, not from this machine); its "
                    "health checks on /readyz decided")
        if not self.spec.examples:
            return "mlship.yaml has no examples"
        if route.host and route.base.startswith("https://"):
            return (f"the HTTPS listener answers for {route.host} with that name's certificate, which cannot be "
                    "checked through the load balancer's own name")
        if serve.auth == "api_key" and not self._api_keys():
            return f"set ${serve.api_keys_env} in your shell to one of the service's keys"
        return ""

    def _api_keys(self) -> list[str]:
        serve = self.project.contract.serve
        return [k.strip() for k in os.environ.get(serve.api_keys_env, "").split(",") if k.strip()]

    def _count(self, current: dict[str, Any] | None) -> int:
        """The tasks a rollout waits for: desired_count, or with auto scaling the scaler's count (within
        min_count..max_count)."""
        o = self.opts
        if not o.scaling or current is None or o.min_count is None or o.max_count is None:
            return o.desired_count
        return max(o.min_count, min(o.max_count, int(current.get("desiredCount") or o.desired_count)))

    def _wait(self, task_arn: str, tg_arn: str, count: int, progress: Progress) -> None:
        service.wait_rollout(self.aws, self.names, task_arn, tg_arn, count, timeout_s=self.rollout_timeout_s,
                             poll_s=self.poll_s, progress=progress)

    def _revision(self, desired: dict[str, Any], diff: list[str], serving: dict[str, Any] | None,
                  progress: Progress) -> str:
        """The revision to run: the serving one when unchanged, the family's latest when it already matches
        (a deploy interrupted after registering), else a new one."""
        if not diff and serving is not None:
            return str(serving["taskDefinitionArn"])
        latest = service.revisions(self.aws, self.names)[:1]
        if latest and not task_differences(desired, service.task_definition(self.aws, latest[0])):
            return latest[0]
        arn = service.register(self.aws, desired)
        progress(f"registered task definition {arn.rpartition('/')[2]}")
        return arn

    # --- batch jobs (mlship batch --target ecs) ------------------------------------------------------
    def _batch_opts(self, job: BatchJob) -> EcsOptions:
        """This run's options: ``--job-queue`` (checked as targets.ecs.batch.job_queue is) over the contract's."""
        return with_job_queue(self.opts, job.job_queue)

    def check_job(self, job: BatchJob) -> None:
        self._batch_opts(job)

    def batch_preflight(self, job: BatchJob) -> list[Check]:
        return jobs.checks(self._batch_opts(job), type(self).client_factory, job)

    def batch_plan(self, job: BatchJob, image: str) -> list[str]:
        region = self.opts.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return jobs_spec.plan_lines(self._batch_opts(job), self.names, job, image=image, region=region,
                                    poll_s=self.poll_s)

    def run_batch(self, job: BatchJob, image: str, progress: Progress) -> JobRun:
        return jobs.run(self.aws, self._batch_opts(job), self.names, job, image, progress, poll_s=self.poll_s)

    # --- status / logs / rollback / destroy ----------------------------------------------------------
    def status(self) -> TargetStatus:
        return lifecycle.status(self.aws, self.names)

    def logs(self, tail: int = 100) -> str:
        return lifecycle.logs(self.aws, self.names, tail)

    def rollback(self, progress: Progress) -> Deployment:
        return lifecycle.rollback(self.aws, self.names, self.opts.desired_count, timeout_s=self.rollout_timeout_s,
                                  poll_s=self.poll_s, progress=progress)

    def destroy(self) -> list[str]:
        return teardown.destroy(self.aws, self.names, keep_role=self.opts.execution_role_arn)
