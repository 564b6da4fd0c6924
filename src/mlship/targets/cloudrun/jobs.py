"""``mlship batch --target cloudrun``: the batch job as a Cloud Run Job (Admin API v2, the same credentials,
endpoint and retry policy as the service; :class:`CloudRunBatch` is mixed into ``CloudRunTarget``).

How a batch job runs (``run_batch``):

1. create the Artifact Registry repository if it is missing; push the batch image; the job references it by
   digest;
2. create the job ``projects/P/locations/R/jobs/<service>-batch`` (labelled ``managed-by=mlship`` plus the batch
   job's labels), or update it when it exists and mlship manages it: image (its command is the worker), env (input,
   output, run id...), cpu / memory, task count, parallelism, retries, task timeout, the service account;
3. run it: one execution, ``taskCount`` tasks; Cloud Run gives each its CLOUD_RUN_TASK_INDEX / COUNT (the shard)
   and retries a failed task up to ``maxRetries`` times;
4. poll the execution (progress: "3/8 tasks done, 1 failed, 4 running"); when it completes, list its tasks and
   read each failed task's last log lines from Cloud Logging (``entries:list``);
5. return the JobRun: counts, retries, the failed tasks' lines, the time from submit to the last task, the cost
   estimate (jobs_spec.py: list prices, overridable), the console URL of the execution.

Interrupting it (Ctrl-C) cancels the execution. Names and requests that do not depend on Google are in
``jobs_spec`` (pure).
"""

from __future__ import annotations

import contextlib
import time
from abc import abstractmethod
from typing import Any, ClassVar

from mlship.batch.jobs import BatchJob, BatchTarget, JobRun, Progress, job_name
from mlship.contract_io import Project
from mlship.errors import ContractError, TargetError
from mlship.reports import Check
from mlship.targets.cloudrun import registry
from mlship.targets.cloudrun.api import Gcp
from mlship.targets.cloudrun.jobs_spec import (
    console_url,
    cost_usd,
    execution_state,
    job_labels,
    job_path,
    job_template,
    limit_problems,
    log_filter,
    plan_lines,
    task_failed,
)
from mlship.targets.cloudrun.options import CloudRunOptions
from mlship.targets.cloudrun.spec import MANAGED_BY, short

LOGGING = "https://logging.googleapis.com"
LOG_LINES = 20  # last lines shown per failed task


class CloudRunBatch(BatchTarget):
    """The batch half of ``CloudRunTarget`` (see the module docstring); it uses the target's ``opts``, ``gcp``."""

    opts: CloudRunOptions
    project: Project  # the target's
    poll_s: ClassVar[float] = 1.0  # the target's

    @property
    @abstractmethod
    def gcp(self) -> Gcp:
        """The target's API handle: ``CloudRunTarget`` provides it (this class is only ever its batch half)."""

    # --- preflight (read-only) and plan (pure) ----------------------------------------------------------
    def batch_preflight(self, job: BatchJob) -> list[Check]:
        from mlship.targets.cloudrun import preflight

        problems = limit_problems(job)
        found = [Check(name="job limits", ok=not problems, detail="; ".join(p for p, _ in problems) or
                       f"{job.tasks} task(s), {job.cpu:g} CPU, {job.memory_mib} MiB, {job.max_retries} retries",
                       fix=" ".join(f for _, f in problems) or None)]
        storage = [uri for uri in (job.input_uri, job.output_uri) if not uri.startswith("gs://")]
        if storage:
            found.append(Check(name="storage", ok=False, detail=f"{storage[0]} is not a gs:// URI: Cloud Run tasks "
                               "cannot read this machine's files, nor another cloud's storage with their Google "
                               "service account", fix="Copy the input to a bucket (`gcloud storage cp -r DIR "
                               "gs://BUCKET/in/`) and pass --input gs://BUCKET/in/ --output gs://BUCKET/out/."))
        gcp = Gcp(self.opts, tries=1, retry_delay_s=0.0, poll_s=1.0, op_timeout_s=5.0)
        try:
            credentials = preflight._credentials(gcp)
            found.append(credentials)
            if credentials.ok:
                found.append(_job_check(gcp, job))
                found.append(preflight._repository(gcp))
                found.append(preflight._registry_host(self.opts))
        finally:
            gcp.close()
        return found

    def destroy_batch(self) -> list[str]:
        """`mlship destroy`: the service's batch job (``<name>-batch``), when mlship made it."""
        api = JobResource(self.gcp, job_name(self.project.contract.name))
        try:
            return api.delete()
        finally:
            api.close()

    def batch_plan(self, job: BatchJob, image: str) -> list[str]:
        _raise_limits(job)
        return plan_lines(self.opts, job, image)

    # --- run ------------------------------------------------------------------------------------------
    def run_batch(self, job: BatchJob, image: str, progress: Progress) -> JobRun:
        _raise_limits(job)
        gcp, opts = self.gcp, self.opts
        registry.ensure_repository(gcp, progress)
        progress(f"pushing {image} to {opts.registry_path}")
        ref = registry.push(gcp, image, progress)
        progress(f"pushed {ref}")
        api = JobsApi(gcp, job)
        try:
            api.apply(job_template(opts, job, ref), job_labels(opts, job), progress)
            started = time.monotonic()
            execution = api.run()
            progress(f"started execution {short(execution)} of {job.name}: {job.tasks} task(s), at most "
                     f"{job.parallelism} at once")
            try:
                done = api.watch(execution, progress, poll_s=self.poll_s)
            except KeyboardInterrupt:
                api.cancel(execution)
                progress(f"cancelled execution {short(execution)}")
                raise
            seconds = time.monotonic() - started
            tasks = api.tasks(execution)
            failed = sorted(int(t.index) for t in tasks if task_failed(t))
            logs = {index: api.last_lines(short(execution), index) for index in failed}
        finally:
            api.close()
        state, message = execution_state(done)
        progress(f"execution {short(execution)} {state} in {seconds:.1f}s" + (f": {message}" if message and
                                                                               state != "succeeded" else ""))
        return JobRun(job_id=execution, tasks=int(done.task_count), succeeded=int(done.succeeded_count),
                      failed=0 if state == "succeeded" else int(done.task_count) - int(done.succeeded_count),
                      retries=int(done.retried_count), failed_logs=logs, seconds=seconds,
                      cost_usd=cost_usd(opts, job, tasks), console=console_url(opts, short(execution)))


def _raise_limits(job: BatchJob) -> None:
    problems = limit_problems(job)
    if problems:
        raise ContractError(" ".join(p for p, _ in problems), why="Cloud Run Jobs' limits.",
                            fix=" ".join(f for _, f in problems))


def _job_check(gcp: Gcp, job: BatchJob) -> Check:
    api = JobsApi(gcp, job)
    try:
        current = api.get()
    except TargetError as exc:
        return Check(name="cloud run jobs api", ok=False, detail=exc.message, fix=exc.fix)
    finally:
        api.close()
    if current is None:
        return Check(name="cloud run jobs api", ok=True, detail=f"{api.name} does not exist yet: the batch run "
                     "creates it (roles/run.developer)")
    if current.labels.get(MANAGED_BY[0]) != MANAGED_BY[1]:
        return Check(name="cloud run jobs api", ok=False, detail=f"{api.name} exists, but mlship did not create it",
                     fix="Rename the service (`name` in mlship.yaml; the job is <name>-batch), or delete that job.")
    return Check(name="cloud run jobs api", ok=True, detail=f"{api.name} exists and is managed by mlship")


class JobResource:
    """One Cloud Run job by name through the Admin API v2 (every call through ``Gcp.call``): get, delete."""

    def __init__(self, gcp: Gcp, job_name: str) -> None:
        self.gcp, self.job_name = gcp, job_name
        self.name = f"projects/{gcp.opts.project}/locations/{gcp.opts.region}/jobs/{job_name}"
        self.parent = self.name.rpartition("/jobs/")[0]
        self._clients: dict[str, Any] = {}

    def _client(self, kind: str) -> Any:
        if kind not in self._clients:
            from google.api_core.client_options import ClientOptions
            from google.cloud import run_v2

            endpoint = self.gcp.opts.api_endpoint
            cls = {"jobs": run_v2.JobsClient, "executions": run_v2.ExecutionsClient, "tasks": run_v2.TasksClient}
            self._clients[kind] = cls[kind](credentials=self.gcp.credentials, transport="rest",
                                            client_options=ClientOptions(api_endpoint=endpoint) if endpoint else None)
        return self._clients[kind]

    def close(self) -> None:
        for client in self._clients.values():
            client.transport.close()
        self._clients.clear()

    def get(self) -> Any:
        return self.gcp.get(f"get job {self.job_name}", self._client("jobs").get_job, self.name)

    def delete(self) -> list[str]:
        """Delete the job when mlship made it (its executions go with it); what was deleted, or what was kept."""
        current = self.get()
        if current is None:
            return []
        if current.labels.get(MANAGED_BY[0]) != MANAGED_BY[1]:
            return [f"kept Cloud Run job {self.name}: mlship did not create it (no label "
                    f"{MANAGED_BY[0]}={MANAGED_BY[1]})"]
        what = f"delete job {self.job_name}"
        error = self.gcp.wait(what, self.gcp.rpc(what, "delete", self._client("jobs").delete_job, {"name": self.name}))
        if error is not None:
            from mlship.targets.cloudrun.api import api_error

            raise api_error(error, what, self.gcp.opts, "delete")
        return [f"Cloud Run job {self.name} (batch) and its executions"]


class JobsApi(JobResource):
    """A batch job's Cloud Run job and its executions."""

    def __init__(self, gcp: Gcp, job: BatchJob) -> None:
        super().__init__(gcp, job.name)
        self.job = job
        assert self.name == job_path(gcp.opts, job)

    def apply(self, template: dict[str, Any], labels: dict[str, str], progress: Progress) -> None:
        """Create the job, or update the one mlship made; waits for the operation."""
        from google.cloud import run_v2

        from mlship import __version__

        current = self.get()
        body = run_v2.Job(labels=labels, template=run_v2.ExecutionTemplate(template), client="mlship",
                          client_version=__version__)
        if current is None:
            progress(f"creating Cloud Run job {self.name}")
            what = f"create job {self.job.name}"
            op = self.gcp.rpc(what, "create", self._client("jobs").create_job,
                              {"parent": self.parent, "job": body, "job_id": self.job.name})
        else:
            if current.labels.get(MANAGED_BY[0]) != MANAGED_BY[1]:
                raise TargetError(f"A Cloud Run job {self.name} exists, but mlship did not create it.",
                                  why=f"It has no label {MANAGED_BY[0]}={MANAGED_BY[1]}, so mlship does not touch it.",
                                  fix="Rename the service (`name` in mlship.yaml; the job is <name>-batch), or "
                                  "delete that job.")
            progress(f"updating Cloud Run job {self.name}")
            what = f"update job {self.job.name}"
            body.name = self.name
            op = self.gcp.rpc(what, "update", self._client("jobs").update_job, {"job": body})
        error = self.gcp.wait(what, op)
        if error is not None:
            from mlship.targets.cloudrun.api import api_error

            raise api_error(error, what, self.gcp.opts, "update")

    def run(self) -> str:
        """Start an execution; its full name (the operation's metadata is the Execution)."""
        what = f"run job {self.job.name}"
        op = self.gcp.rpc(what, "create", self._client("jobs").run_job, {"name": self.name})
        name = str(getattr(op.metadata, "name", "") or "")
        if not name:
            raise TargetError(f"{what}: Cloud Run started no execution (the operation names none).",
                              fix=f"gcloud run jobs executions list --job {self.job.name} --region "
                              f"{self.gcp.opts.region} --project {self.gcp.opts.project}")
        return name

    def execution(self, name: str) -> Any:
        return self.gcp.rpc(f"get execution {short(name)}", "get", self._client("executions").get_execution,
                            {"name": name})

    def watch(self, name: str, progress: Progress, *, poll_s: float) -> Any:
        """Poll the execution until it completes, with a line whenever the counts change; the final Execution."""
        last, delay = "", poll_s
        rounds = -(-self.job.tasks // max(1, self.job.parallelism))
        deadline = time.monotonic() + self.job.timeout_s * (self.job.max_retries + 1) * rounds + 600
        while True:
            ex = self.execution(name)
            line = (f"{ex.succeeded_count}/{ex.task_count} tasks done, {ex.failed_count} failed, "
                    f"{ex.running_count} running" + (f", {ex.retried_count} retried" if ex.retried_count else ""))
            if line != last:
                progress(line)
                last, delay = line, poll_s
            if execution_state(ex)[0] != "running":
                return ex
            if time.monotonic() > deadline:
                raise TargetError(f"Execution {short(name)} did not finish in time.",
                                  why="Its tasks ran longer than their timeout and retries allow.",
                                  fix=f"gcloud run jobs executions describe {short(name)} --region "
                                  f"{self.gcp.opts.region} --project {self.gcp.opts.project}")
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0, poll_s * 10)

    def cancel(self, name: str) -> None:
        with contextlib.suppress(TargetError):  # finished meanwhile, or gone
            self.gcp.rpc(f"cancel execution {short(name)}", "update", self._client("executions").cancel_execution,
                         {"name": name})

    def tasks(self, name: str) -> list[Any]:
        pager = self.gcp.rpc(f"list tasks of {short(name)}", "list", self._client("tasks").list_tasks,
                             {"parent": name})
        return sorted(pager, key=lambda t: int(t.index))

    def last_lines(self, execution: str, index: int) -> list[str]:
        """The last LOG_LINES lines task ``index`` wrote (all attempts), oldest first; or why there are none."""
        o = self.gcp.opts
        url = f"{o.logging_endpoint or LOGGING}/v2/entries:list"
        body = {"resourceNames": [f"projects/{o.project}"], "filter": log_filter(o, self.job, execution, index),
                "orderBy": "timestamp desc", "pageSize": LOG_LINES}
        where = (f"gcloud logging read '{log_filter(o, self.job, execution, index)}' --project {o.project} "
                 f"--limit {LOG_LINES}")
        try:
            status, data = registry.rest(self.gcp, f"read the logs of task {index}", "POST", url, body)
        except TargetError as exc:
            return [f"(no logs: {exc.message}; try: {where})"]
        if status != 200:
            message = (data.get("error", {}) if isinstance(data, dict) else {}).get("message") or status
            return [f"(no logs: Cloud Logging answered {status}: {message}; roles/logging.viewer reads them: "
                    f"{where})"]
        lines = [str(e.get("textPayload") or e.get("jsonPayload", {}).get("message") or "")
                 for e in reversed(data.get("entries", []))]
        return lines or [f"(the task wrote no log lines; {where})"]
