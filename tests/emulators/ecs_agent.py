"""The platform behaviour moto lacks, for the ecs target's tests: a test-side "ECS agent" that acts on moto's
models in this process the way ECS and the load balancer act on a real account.

Every ``tick_s`` it looks at each ACTIVE ECS service in moto and:

* starts a deployment when the service names a task definition its PRIMARY deployment does not run (moto's
  UpdateService only swaps the name), the previous PRIMARY becoming ACTIVE;
* runs the PRIMARY deployment's tasks: a moto task (``run_task``: ENI, private IP, group ``service:NAME``) and a
  container of the task definition's image on the local Docker engine (pulled from the loopback registry that
  stands in for ECR), with its environment, port 8080 published on 127.0.0.1, the memory limit;
* health-checks each task with GET /readyz; a healthy task is registered in the service's target group (its
  private IP, port 8080) so that DescribeTargetHealth reports it; a task whose container exits, or that is not
  ready in time, is stopped with ECS's reason, its output shipped to CloudWatch Logs (the awslogs driver's
  stream ``mlship/model/<task id>``);
* the deployment circuit breaker, when CreateService/UpdateService asked for it (read from the recorded
  requests: moto keeps no deploymentConfiguration): after ``failure_threshold`` failed tasks the deployment is
  FAILED and, with rollback, the service returns to the previous task definition (a new PRIMARY deployment);
* once the PRIMARY deployment has its tasks healthy: COMPLETED, and the other deployments' tasks are drained
  (deregistered, SIGTERM, removed);
* a deleted service's tasks are stopped.

The load balancers' front end is ``ecs_alb.AlbFront``: ``url(alb_url)`` maps a load balancer's URL
(``http://<DNSName>[/prefix]``) to its loopback address, and ``proxy_url`` is an HTTP proxy through which
``http://<DNSName>`` itself answers (tests set HTTP_PROXY to it, so mlship's smoke test reaches the load balancer as
it would on AWS); each request goes by the listener's rules to a healthy target of the target group they name.
The agent writes the service's events as ECS does (started and stopped tasks, registered targets, deployment
completed or failed, rolling back, steady state). ``stop()`` removes every container and server it made.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from emulators import _runtime
from emulators._runtime import LABEL
from emulators.ecs_alb import AlbFront, store_transforms
from emulators.ecs_moto import MotoServer

ACCOUNT = "123456789012"
PORT = 8080


@dataclass
class RunningTask:
    arn: str
    service: str
    cluster: str
    task_definition: str
    ip: str
    container: Any
    host_port: int
    deadline: float
    log_group: str
    stream: str
    healthy: bool = False
    shipped: int = 0
    target_groups: list[str] = field(default_factory=list)


class EcsAgent:
    def __init__(self, docker: Any, moto: MotoServer, region: str, *, failure_threshold: int = 3,
                 tick_s: float = 0.2) -> None:
        self.docker, self.moto, self.region = docker, moto, region
        self.failure_threshold, self.tick_s = failure_threshold, tick_s
        self.id = uuid.uuid4().hex[:8]
        self.tasks: dict[str, RunningTask] = {}
        self.seen: set[str] = set()  # the deployments this agent runs
        self.front = AlbFront(lambda: self.elb, self._target)
        self.proxy_url = self.front.proxy_url
        self.errors: list[str] = []
        # tasks in the host's network (a free loopback port), so they reach moto's S3 with their task role
        self.host_network = False
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._thread = threading.Thread(target=self._loop, name=f"ecs-agent-{self.id}", daemon=True)
        self._stopping: list[threading.Thread] = []
        moto.after.append(self._on_call)

    def _on_call(self, action: str, params: dict[str, Any]) -> None:
        """CreateService/UpdateService start their deployment before they answer, as ECS's do; a rule's
        transforms are kept on moto's rule."""
        store_transforms(self.elb, action, params)
        if action in ("CreateService", "UpdateService"):
            with self._lock:
                for svc in list(self.ecs.services.values()):
                    if svc.status == "ACTIVE":
                        self._primary(svc)

    # --- moto's models -----------------------------------------------------------------------------
    @property
    def ecs(self) -> Any:
        from moto.ecs.models import ecs_backends

        return ecs_backends[ACCOUNT][self.region]

    @property
    def elb(self) -> Any:
        from moto.elbv2.models import elbv2_backends

        return elbv2_backends[ACCOUNT][self.region]

    @property
    def logs(self) -> Any:
        from moto.logs.models import logs_backends

        return logs_backends[ACCOUNT][self.region]

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> EcsAgent:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        if self._on_call in self.moto.after:
            self.moto.after.remove(self._on_call)
        for thread in self._stopping:
            thread.join(30)
        with self._lock:
            for task in list(self.tasks.values()):
                _runtime.stop_container(task.container)
            self.tasks.clear()
        self.front.close()

    def containers(self) -> list[Any]:
        return list(self.docker.containers.list(all=True, filters={"label": f"{LABEL}.id={self.id}"}))

    def url(self, alb_url: str) -> str:
        """The loopback URL that stands for a load balancer's URL (``http://<DNSName>[/prefix]``)."""
        dns, _, prefix = alb_url.removeprefix("http://").partition("/")
        return self.front.url(dns) + (f"/{prefix}" if prefix else "")

    def _target(self, tg_arn: str) -> tuple[int, str] | None:
        group = self.elb.target_groups.get(tg_arn)
        registered = {t["Id"] for t in group.targets.values()} if group is not None else set()
        live = [t for t in list(self.tasks.values()) if t.healthy and t.ip in registered]  # no lock: never waits
        if not live:
            return None
        task = random.choice(live)
        return task.host_port, task.arn.rpartition("/")[2]

    def _event(self, svc: Any, message: str) -> None:
        """An event on the service, newest first, as ECS writes them."""
        svc.events.insert(0, {"id": str(uuid.uuid4()), "createdAt": datetime.now(timezone.utc),
                              "message": f"(service {svc.name}) {message}"})
        del svc.events[100:]

    # --- the loop ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                with self._lock:
                    self._tick()
            except Exception as exc:  # keep running; the test sees what went wrong
                where = traceback.extract_tb(exc.__traceback__)[-1]
                self.errors.append(f"{type(exc).__name__}: {exc} ({where.filename}:{where.lineno})")

    def _tick(self) -> None:
        active = {}
        for svc in list(self.ecs.services.values()):
            if svc.status == "ACTIVE":
                active[svc.name] = svc
                self._reconcile(svc)
        for task in list(self.tasks.values()):
            if task.service not in active:
                self._stop_task(task, "Service deleted")
        for task in list(self.tasks.values()):
            self._ship_logs(task)

    def _primary(self, svc: Any) -> dict[str, Any]:
        primary = next((d for d in svc.deployments if d["status"] == "PRIMARY"), None)
        if primary is not None and primary["id"] not in self.seen and primary["taskDefinition"] == svc.task_definition:
            self.seen.add(primary["id"])  # moto's deployment of a new service: this agent runs it from here
        elif primary is None or primary["taskDefinition"] != svc.task_definition:
            primary = self._new_deployment(svc)
        primary["desiredCount"] = svc.desired_count
        return primary

    def _reconcile(self, svc: Any) -> None:
        primary = self._primary(svc)
        if primary.get("rolloutState") == "FAILED":
            return
        mine = [t for t in self.tasks.values() if t.service == svc.name and t.task_definition == primary[
            "taskDefinition"]]
        for task in mine:
            if not task.healthy:
                self._check(task, primary)
        if primary["failedTasks"] >= self.failure_threshold and self._circuit_breaker(svc.name).get("enable"):
            self._trip(svc, primary)
            return
        live = [t for t in self.tasks.values() if t.service == svc.name and t.task_definition == primary[
            "taskDefinition"]]
        for _ in range(max(0, svc.desired_count - len(live))):
            self._launch(svc, primary)
        healthy = [t for t in live if t.healthy]
        primary["runningCount"] = len(healthy)
        primary["pendingCount"] = max(0, len(live) - len(healthy))
        svc.running_count, svc.pending_count = len(healthy), primary["pendingCount"]
        if len(healthy) >= svc.desired_count and primary["rolloutState"] != "COMPLETED":
            for task in [t for t in self.tasks.values() if t.service == svc.name and
                         t.task_definition != primary["taskDefinition"]]:
                self._stop_task(task, "Scaling activity initiated by (deployment " + primary["id"] + ")")
            svc.deployments = [d for d in svc.deployments if d is primary]
            self._event(svc, f"(deployment {primary['id']}) deployment completed.")
            self._event(svc, "has reached a steady state.")
            primary["rolloutState"] = "COMPLETED"
            primary["rolloutStateReason"] = f"ECS deployment {primary['id']} completed."
            primary["updatedAt"] = datetime.now(timezone.utc)

    def _new_deployment(self, svc: Any) -> dict[str, Any]:
        now = datetime.now(timezone.utc)
        deployment = {"id": f"ecs-svc/{random.randint(10**15, 10**16)}", "status": "PRIMARY",
                      "taskDefinition": svc.task_definition, "desiredCount": svc.desired_count, "pendingCount": 0,
                      "runningCount": 0, "failedTasks": 0, "createdAt": now, "updatedAt": now,
                      "launchType": "FARGATE", "rolloutState": "IN_PROGRESS",
                      "rolloutStateReason": "ECS deployment in progress."}
        for other in svc.deployments:
            if other["status"] == "PRIMARY":
                other["status"] = "ACTIVE"
        svc.deployments = [deployment, *svc.deployments]
        self.seen.add(deployment["id"])
        return deployment

    def _circuit_breaker(self, service: str) -> dict[str, Any]:
        for _, action, params in reversed(self.moto.calls):
            if action in ("CreateService", "UpdateService") and service in (params.get("serviceName"),
                                                                               params.get("service")):
                config = params.get("deploymentConfiguration")
                if config is not None:
                    return dict(config.get("deploymentCircuitBreaker") or {})
        return {}

    def _trip(self, svc: Any, primary: dict[str, Any]) -> None:
        primary["rolloutState"] = "FAILED"
        primary["rolloutStateReason"] = "ECS deployment circuit breaker: tasks failed to start."
        self._event(svc, f"(deployment {primary['id']}) deployment failed: tasks failed to start.")
        for task in [t for t in self.tasks.values() if t.service == svc.name and
                     t.task_definition == primary["taskDefinition"]]:
            self._stop_task(task, "ECS deployment circuit breaker: tasks failed to start.")
        previous = next((d for d in svc.deployments if d is not primary and d["status"] == "ACTIVE"), None)
        if previous is not None and self._circuit_breaker(svc.name).get("rollback"):
            svc.task_definition = previous["taskDefinition"]
            primary["status"] = "ACTIVE"
            rollback = self._new_deployment(svc)
            self._event(svc, f"rolling back to deployment {rollback['id']}.")
            svc.deployments = [rollback, primary]  # the failed one stays listed until the rollback completes

    # --- tasks -------------------------------------------------------------------------------------
    def _launch(self, svc: Any, deployment: dict[str, Any]) -> None:
        td = self.ecs.describe_task_definition(deployment["taskDefinition"])
        spec = td.container_definitions[0]
        from moto.ecs.models import Task

        # As moto's run_task does for FARGATE (which fails on a container definition without `memory`, valid on
        # Fargate): a task with an ENI and a private IP in the service's subnets
        task = Task(cluster=self.ecs.clusters[svc.cluster_name], task_definition=td, container_instance_arn=None,
                    resource_requirements={}, backend=self.ecs, group=f"service:{svc.name}", launch_type="FARGATE",
                    started_by=deployment["id"], networking_configuration=svc.network_configuration)
        self.ecs.tasks.setdefault(svc.cluster_name, {})[task.task_arn] = task
        env = {e["name"]: e["value"] for e in spec.get("environment", [])}
        env.update(self._role_credentials(td, task.task_arn))
        options = (spec.get("logConfiguration") or {}).get("options", {})
        task_id = task.task_arn.rpartition("/")[2]
        container, host_port = _runtime.run_container(
            self.docker, spec["image"], name=f"ecs-{self.id}-{task_id[:12]}", port=PORT, env=env,
            labels={LABEL: "ecs", f"{LABEL}.id": self.id, f"{LABEL}.task": task_id}, command=None, args=None,
            mem_limit=int(td.memory) * 2**20 if td.memory else None, nano_cpus=None,
            host_network=self.host_network)
        health = spec.get("healthCheck") or {}
        patience = int(health.get("startPeriod", 0)) + int(health.get("interval", 30)) * int(health.get("retries", 3))
        self._event(svc, f"has started 1 tasks: (task {task_id}).")
        self.tasks[task.task_arn] = RunningTask(
            arn=task.task_arn, service=svc.name, cluster=svc.cluster_name, task_definition=td.arn,
            ip=_ip(task), container=container, host_port=host_port, deadline=time.monotonic() + patience,
            log_group=options.get("awslogs-group", ""),
            stream=f"{options.get('awslogs-stream-prefix', 'ecs')}/{spec['name']}/{task_id}",
            target_groups=[lb["targetGroupArn"] for lb in svc.load_balancers])

    def _role_credentials(self, td: Any, task_arn: str) -> dict[str, str]:
        """What ECS gives a task with a task role: that role's temporary credentials (STS AssumeRole, as the
        agent's credential endpoint serves them) and the region; with host networking, moto's endpoint too."""
        role = getattr(td, "task_role_arn", None)
        if not role:
            return {}
        import boto3

        sts = boto3.client("sts", endpoint_url=self.moto.endpoint, region_name=self.region,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        creds = sts.assume_role(RoleArn=role, RoleSessionName=task_arn.rpartition("/")[2][:32])["Credentials"]
        env = {"AWS_ACCESS_KEY_ID": creds["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
               "AWS_SESSION_TOKEN": creds["SessionToken"], "AWS_REGION": self.region,
               "AWS_DEFAULT_REGION": self.region, "AWS_EC2_METADATA_DISABLED": "true"}
        return {**env, "AWS_ENDPOINT_URL": self.moto.endpoint} if self.host_network else env

    def _check(self, task: RunningTask, deployment: dict[str, Any]) -> None:
        code = _runtime.exit_code(task.container)
        if code is not None or time.monotonic() > task.deadline:
            deployment["failedTasks"] += 1
            why = ("Essential container in task exited" if code is not None else
                   "Task failed container health checks")
            self._stop_task(task, why)
            return
        ok, _ = _runtime._http_ok(task.host_port, "/readyz", {}, 1.0)
        if ok:
            task.healthy = True
            moto_task = self._moto_task(task)
            if moto_task is not None:
                moto_task.health_status = "HEALTHY"
            for group in task.target_groups:
                self.elb.register_targets(group, [{"Id": task.ip, "Port": PORT}])
                svc = self._service(task)
                if svc is not None:
                    self._event(svc, f"registered 1 targets in (target-group {group})")

    def _stop_task(self, task: RunningTask, reason: str) -> None:
        for group in task.target_groups:
            with contextlib.suppress(Exception):  # the target group may be gone already
                self.elb.deregister_targets(group, [{"Id": task.ip, "Port": PORT}])
        task.healthy = False
        svc = self._service(task)
        if svc is not None:
            self._event(svc, f"has stopped 1 running tasks: (task {task.arn.rpartition('/')[2]}).")
        code = _runtime.exit_code(task.container)
        self._ship_logs(task)
        moto_task = self._moto_task(task)
        if moto_task is not None:
            self.ecs.stop_task(task.cluster, task.arn, reason)
            moto_task.containers[0].exitCode = code
        self.tasks.pop(task.arn, None)
        stopping = threading.Thread(target=_runtime.stop_container, args=(task.container,), daemon=True)
        stopping.start()
        self._stopping.append(stopping)

    def _service(self, task: RunningTask) -> Any:
        return next((s for s in self.ecs.services.values() if s.name == task.service and s.status == "ACTIVE"), None)

    def _moto_task(self, task: RunningTask) -> Any:
        return self.ecs.tasks.get(task.cluster, {}).get(task.arn)

    def _ship_logs(self, task: RunningTask) -> None:
        """The awslogs driver: the container's new output lines into the task's stream."""
        if not task.log_group or task.log_group not in self.logs.groups:
            return
        try:
            lines = task.container.logs().decode(errors="replace").splitlines()
        except Exception:
            return
        if len(lines) <= task.shipped:
            return
        group = self.logs.groups[task.log_group]
        if task.stream not in group.streams:
            self.logs.create_log_stream(task.log_group, task.stream)
        now = int(time.time() * 1000)
        self.logs.put_log_events(task.log_group, task.stream,
                                 [{"timestamp": now, "message": line} for line in lines[task.shipped:]])
        task.shipped = len(lines)


def _ip(task: Any) -> str:
    for attachment in task.attachments:
        for detail in attachment["details"]:
            if detail["name"] == "privateIPv4Address":
                return str(detail["value"])
    raise AssertionError(f"task {task.task_arn} has no private IP: was it run with awsvpc networking?")
