"""The ``cloudrun`` target: push to Artifact Registry, run on Google Cloud Run (Admin API v2).

State lives in Cloud Run, not in a file: the service is ``projects/P/locations/R/services/<name>``, labelled
``managed-by=mlship``; its revisions are the deploy history (each carries the ``model-version`` label).

Modules of this package: ``options`` (``targets.cloudrun``), ``spec`` (the rendered spec, the comparison,
the plan; pure), ``api`` (credentials, clients, retries, errors, smoke test), ``registry`` (repository,
push), ``service`` (one service's API operations), and ``target``: the deploy policy.

How a deploy switches versions (``CloudRunTarget.deploy``):

1. create the Artifact Registry repository if it is missing; push the image; the service references it
   by digest;
2. get the service. Missing: create it. Present, with the spec mlship sets (image, env, secrets,
   resources, scaling, probes, labels, ingress) unchanged and its latest revision ready: no call that
   changes anything. Otherwise update it with a new revision and traffic pinned: 100% stays on the
   revision serving now, the new one gets 0% and the tag ``mlship-candidate`` (a URL of its own);
3. wait for the operation; if the new revision is not Ready, fail naming it and its condition: traffic
   never moved (a failed first deploy removes the service it created: nothing half-made stays);
4. smoke test the new revision at its tagged URL (each example in mlship.yaml, and the version in
   ``X-Model-Version``); only then move 100% of traffic to it. Where no tagged URL is reported, traffic
   moves first and is moved back if the smoke test fails;
5. make the IAM policy match ``public`` (``roles/run.invoker`` for ``allUsers``, or not).

Transient API errors (429, 500, 502, 503, 504) are retried with exponential backoff; others fail at once
with what, why and how to fix it. Re-running an interrupted deploy converges.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from google.cloud import run_v2

from mlship.artifacts.provenance import CLOUDRUN, record, recorded_text
from mlship.contract_io import Project
from mlship.errors import TargetError
from mlship.image import engine
from mlship.reports import Check
from mlship.targets.base import Deployment, Progress, Target, TargetStatus, parse_options
from mlship.targets.cloudrun import registry
from mlship.targets.cloudrun.api import Gcp, api_error
from mlship.targets.cloudrun.jobs import CloudRunBatch
from mlship.targets.cloudrun.options import CloudRunOptions
from mlship.targets.cloudrun.service import ServiceApi
from mlship.targets.cloudrun.spec import (
    CANDIDATE_TAG,
    LATEST,
    MAX_SERVICE_NAME,
    REVISION,
    plan_lines,
    ready_state,
    render_template,
    service_differences,
    service_labels,
    serving_revision,
    short,
    tag_url,
    template_differences,
    traffic_spec,
    traffic_split,
)
from mlship.targets.common import smoke_test

VERSION_LABEL = "org.opencontainers.image.version"
SIGKILL_AFTER_S = 10  # Cloud Run: SIGTERM, then SIGKILL 10 s later


class CloudRunTarget(CloudRunBatch, Target):
    """The service on Google Cloud Run (see the module docstring); batch jobs as Cloud Run Jobs (``jobs``)."""

    name: ClassVar[str] = "cloudrun"
    tries: ClassVar[int] = 5  # API calls: 1 + 4 retries of transient errors
    retry_delay_s: ClassVar[float] = 1.0  # first backoff; doubles each retry
    poll_s: ClassVar[float] = 1.0  # long-running operation polling (grows to 5 s)
    op_timeout_s: ClassVar[float] = 900.0

    def __init__(self, project: Project, options: dict[str, Any]) -> None:
        super().__init__(project, options)
        self.opts = parse_options(CloudRunOptions, self.name, options)
        self.service = project.contract.name
        if len(self.service) > MAX_SERVICE_NAME:
            raise TargetError(f"Service name `{self.service}` is longer than Cloud Run's {MAX_SERVICE_NAME} "
                              "characters.", fix="Shorten `name` in mlship.yaml.")
        grace = project.contract.serve.shutdown_grace_s
        if grace >= SIGKILL_AFTER_S:
            raise TargetError(
                f"serve.shutdown_grace_s is {grace:g}s, but Cloud Run kills a container {SIGKILL_AFTER_S}s after "
                "SIGTERM.", why="Requests still in flight when SIGKILL comes would be cut off.",
                fix=f"Set serve.shutdown_grace_s below {SIGKILL_AFTER_S} in mlship.yaml (the default, 8, fits).")
        self.full_name = f"projects/{self.opts.project}/locations/{self.opts.region}/services/{self.service}"
        self.ready_timeout = project.contract.test.ready_timeout_s
        self._gcp: Gcp | None = None

    @property
    def gcp(self) -> Gcp:
        if self._gcp is None:
            self._gcp = Gcp(self.opts, tries=self.tries, retry_delay_s=self.retry_delay_s, poll_s=self.poll_s,
                            op_timeout_s=self.op_timeout_s)
        return self._gcp

    @property
    def api(self) -> ServiceApi:
        return ServiceApi(self.gcp, self.service, revision_wait_s=self.ready_timeout + 120)

    def close(self) -> None:
        if self._gcp is not None:
            self._gcp.close()
            self._gcp = None

    # --- preflight (read-only) ---------------------------------------------------------------------
    def preflight(self) -> list[Check]:
        from mlship.targets.cloudrun import preflight

        key_check = None
        serve = self.project.contract.serve
        if serve.auth == "api_key":
            try:
                have_key = self._api_key() is not None
                key_check = Check(name="api keys", ok=True, detail=f"{serve.api_keys_env} comes from Secret Manager"
                                  + ("" if have_key else f"; ${serve.api_keys_env} is not set here, so the smoke "
                                     "test will be skipped"))
            except TargetError as exc:
                key_check = Check(name="api keys", ok=False, detail=exc.message, fix=exc.fix)
        return preflight.checks(self.opts, self.service, key_check, self.spec.fetch_at_start)

    # --- plan (pure) ------------------------------------------------------------------------------
    def plan(self, image: str) -> list[str]:
        self._api_key()
        serve = self.project.contract.serve
        from mlship.targets.cloudrun.preflight import access_plan

        return plan_lines(self.opts, service=self.service, image=image, ready_timeout_s=self.ready_timeout,
                          api_keys_env=serve.api_keys_env if serve.auth == "api_key" else None) + access_plan(
                              self.opts, self.spec.fetch_at_start)

    def runtime_env(self) -> dict[str, str]:
        """For the test gate: PORT and targets.cloudrun.env. The secrets (targets.cloudrun.secrets) live in
        Secret Manager and are not read here; for serve.auth api_key the gate uses ``$<serve.api_keys_env>``
        from your shell, so export the same keys before `mlship deploy` (TargetError when it is unset)."""
        env = {"PORT": "8080", **{k: (str(v).lower() if isinstance(v, bool) else str(v))
                                  for k, v in self.opts.env.items()}}
        serve = self.project.contract.serve
        if serve.auth == "api_key":
            self._api_key()  # the secret is configured
            if not os.environ.get(serve.api_keys_env, "").strip():
                raise TargetError(
                    f"serve.auth is api_key but ${serve.api_keys_env} is not set in this shell.",
                    why="The test gate runs the image here, before Cloud Run does; it cannot read Secret Manager, "
                    "so it starts the server with the keys of your shell (the server refuses to start without).",
                    fix=f"export {serve.api_keys_env}=<the keys in the secret> before `mlship deploy`.",
                )
            env[serve.api_keys_env] = os.environ[serve.api_keys_env]
        return env

    def _api_key(self) -> str | None:
        """A key for the smoke test when serve.auth is api_key (the service reads its keys from a secret)."""
        serve = self.project.contract.serve
        if serve.auth != "api_key":
            return None
        if serve.api_keys_env not in self.opts.secrets:
            raise TargetError(
                f"serve.auth is api_key but targets.cloudrun.secrets has no {serve.api_keys_env}.",
                why="On Cloud Run the keys come from Secret Manager, never from a plain env value.",
                fix=f"printf 'key1,key2' | gcloud secrets create mlship-api-keys --data-file=- ; then set "
                f"`secrets: {{{serve.api_keys_env}: mlship-api-keys:latest}}` under targets.cloudrun.")
        keys = [k.strip() for k in os.environ.get(serve.api_keys_env, "").split(",") if k.strip()]
        return keys[0] if keys else None

    # --- deploy -----------------------------------------------------------------------------------
    def deploy(self, image: str, progress: Progress) -> Deployment:
        api_key, api = self._api_key(), self.api
        image_labels = engine.inspect(image).labels
        version = image_labels.get(VERSION_LABEL) or image.rpartition(":")[2]
        labels = service_labels(self.opts, version=version, model_sha=image_labels.get("dev.mlship.model-sha256", ""))
        from mlship.targets.cloudrun.preflight import grant_artifact_access

        grant_artifact_access(self.opts, self.spec.fetch_at_start, progress)  # before a revision fetches it
        registry.ensure_repository(self.gcp, progress)
        progress(f"pushing {image} to {self.opts.registry_path}")
        ref = registry.push(self.gcp, image, progress)
        progress(f"pushed {ref}")
        desired = run_v2.RevisionTemplate(render_template(self.opts, ref, labels, ready_timeout_s=self.ready_timeout,
                                                          annotations=record(image_labels, CLOUDRUN)))

        service, previous, op_error = api.get(), None, None  # previous: the revision serving before
        if service is None:
            desired.revision = api.new_revision_name(0)
            progress(f"creating Cloud Run service {self.full_name} (revision {desired.revision})")
            service, op_error = api.create(desired, labels)
            changed = True
        else:
            api.check_owned(service)
            previous = serving_revision(service)
            diff = template_differences(desired, service.template,
                                        service_account=self.opts.service_account is not None)
            diff += service_differences(service, labels)
            changed = bool(diff) or api.latest_state(service) == "failed"
            if changed:
                desired.revision = api.new_revision_name(int(service.generation))
                progress(f"updating {self.service} ("
                         + (f"changed: {', '.join(diff)}" if diff else "its latest revision failed; trying again")
                         + f"): new revision {desired.revision}"
                         + (f"; traffic stays on {previous} until it passed the smoke test" if previous else ""))
                service, op_error = api.update_template(service, desired, labels, previous)
            else:
                progress(f"{self.service} already runs this spec (revision "
                         f"{short(service.latest_created_revision)}); nothing to update")
        revision = self._check_revision(api, service, previous, op_error, progress)
        api.ensure_invoker(self.opts.public, progress)
        moved = self._route_to(api, service, revision, previous, version, api_key, progress)
        prev_image = None
        if previous and previous != revision:
            prev = api.revision(previous)
            prev_image = str(prev.containers[0].image) if prev is not None and prev.containers else None
        progress(f"{self.service} serves revision {revision} ({version}) at {service.uri}")
        return Deployment(url=str(service.uri), image=ref, version=version, previous=prev_image,
                          changed=changed or moved)

    def _check_revision(self, api: ServiceApi, service: Any, previous: str | None, op_error: BaseException | None,
                        progress: Progress) -> str:
        """The latest created revision once it is Ready; TargetError (traffic unchanged) if it is not."""
        name = short(service.latest_created_revision)
        state, message = ready_state(api.wait_revision(name)) if name else ("failed", "no revision was created")
        if state == "ready":
            if op_error is not None:  # the revision is fine; the operation failed for another reason
                raise api_error(op_error, f"deploy {self.service}", self.opts, "update")
            progress(f"revision {name} is ready")
            return name
        raise TargetError(
            f"Revision {name} of {self.service} did not become ready: {message or state}."
            + self._fall_back(api, service, previous),
            why=f"Cloud Run probes GET /readyz every second, up to {self.ready_timeout:g}s (test.ready_timeout_s); "
            "the container must load the model and answer 200 within that.",
            fix="Run `mlship test` on the image. The revision's log: gcloud logging read "
            f"'resource.type=\"cloud_run_revision\" AND resource.labels.revision_name=\"{name}\"' "
            f"--project {self.opts.project} --limit 50")

    def _fall_back(self, api: ServiceApi, service: Any, previous: str | None) -> str:
        """After a failure: traffic 100% on ``previous`` (no candidate tag); with none, remove the service
        (it has no working revision at all). Returns the sentence that says which."""
        if previous is None:
            api.delete()
            return " Removed the service: it had no working revision to fall back to."
        if traffic_spec(service) != [(REVISION, previous, 100, "")]:
            api.set_traffic(service, previous, f"keep traffic of {self.service} on {previous}")
        return f" Traffic stays on {previous}, which keeps serving."

    def _route_to(self, api: ServiceApi, service: Any, revision: str, previous: str | None, version: str,
                  api_key: str | None, progress: Progress) -> bool:
        """Smoke-test ``revision`` and give it 100% of traffic; True when traffic moved."""
        tagged = tag_url(service, CANDIDATE_TAG)
        if tagged:
            self._smoke(api, tagged, service, version, api_key, previous, progress)
        if traffic_spec(service) == [(LATEST, "", 100, "")]:
            if not tagged:
                self._smoke(api, str(service.uri), service, version, api_key, previous, progress)
            return False
        progress(f"moving 100% of traffic to {revision}")
        fresh = api.set_traffic(service, None, f"move traffic of {self.service} to {revision}")
        if not tagged:  # no URL to try it on first (e.g. after a rollback): check it now, undo on failure
            self._smoke(api, str(fresh.uri), fresh, version, api_key, previous, progress)
        return True

    def _smoke(self, api: ServiceApi, url: str, service: Any, version: str, api_key: str | None,
               previous: str | None, progress: Progress) -> None:
        examples, serve = self.project.contract.examples, self.project.contract.serve
        if serve.auth == "api_key" and api_key is None:
            progress(f"smoke test skipped: set ${serve.api_keys_env} in your shell to one of the service's keys "
                     "(the startup probe checked /readyz)")
            return
        id_token = None if self.opts.public else self.gcp.id_token(str(service.uri))
        if id_token is None and not self.opts.public and not self.gcp.anonymous:
            progress("smoke test skipped: your credentials cannot mint an ID token for the private service "
                     "(the startup probe checked /readyz)")
            return
        # The ID token goes in X-Serverless-Authorization, so ``Authorization`` stays free for an API key.
        headers = {**({"X-Serverless-Authorization": f"Bearer {id_token}"} if id_token else {}),
                   **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        problems = smoke_test(url, examples, version=version, headers=headers)
        if not problems:
            progress(f"smoke test passed: {len(examples)} example(s) via {url}")
            return
        where = self._fall_back(api, api.get(required=True), previous)
        raise TargetError(f"Smoke test of {self.service} failed at {url}:\n  " + "\n  ".join(problems)
                          + "\n" + where.strip(), fix="Run `mlship test` on the image to see every example's result.")

    # --- status / logs / rollback / destroy -------------------------------------------------------
    def status(self) -> TargetStatus:
        api = self.api
        service = api.get()
        if service is None:
            return TargetStatus(url=None, image=None, version=None, state="not deployed", history=[])
        revisions, split, serving = api.revisions(), traffic_split(service), serving_revision(service)
        history = [f"{short(r.name)} ({r.labels.get('model-version', '?')}, {ready_state(r)[0]}"
                   + (f", {split[short(r.name)]}% traffic" if split.get(short(r.name)) else "") + ")"
                   + _model_of(r, ": ") for r in revisions]
        current = next((r for r in revisions if short(r.name) == serving), None)
        state = ready_state(current)[0] if current is not None else "not serving"
        state = "serving" if state == "ready" else state
        latest = short(service.latest_created_revision)
        latest_state, why = next((ready_state(r) for r in revisions if short(r.name) == latest), ("pending", ""))
        if latest != serving and latest_state == "failed":
            state += f"; the latest revision {latest} failed: {why.splitlines()[0] if why else '?'}"
        return TargetStatus(
            url=str(service.uri) or None, image=current.containers[0].image if current is not None else None,
            version=current.labels.get("model-version") if current is not None else None,
            state=state, history=history, ready=state.startswith("serving"),
            serving=(_model_of(current) or None) if current is not None else None)

    def logs(self, tail: int = 100) -> str:
        raise TargetError(
            "mlship does not read Cloud Run logs: they are in Cloud Logging, which mlship does not call.",
            fix=f"gcloud logging read 'resource.type=\"cloud_run_revision\" AND resource.labels.service_name="
            f"\"{self.service}\"' --project {self.opts.project} --limit {tail} --freshness 1d "
            f"(or: gcloud run services logs read {self.service} --region {self.opts.region} "
            f"--project {self.opts.project} --limit {tail})")

    def rollback(self, progress: Progress) -> Deployment:
        api = self.api
        service = api.get()
        if service is None:
            raise TargetError(f"Nothing is deployed for `{self.service}` on Cloud Run.",
                              fix="Deploy first: `mlship deploy --target cloudrun`.")
        api.check_owned(service)
        revisions, serving = api.revisions(), serving_revision(service)
        names = [short(r.name) for r in revisions]
        current = revisions[names.index(serving)] if serving in names else None
        older = revisions[names.index(serving) + 1:] if serving in names else []
        target = next((r for r in older if ready_state(r)[0] == "ready"), None)
        if target is None:
            raise TargetError(f"No previous ready revision of `{self.service}` to roll back to"
                              + (f" (it serves {serving})." if serving else "."),
                              fix="Deploy another version first; `mlship status --target cloudrun` lists the "
                              "revisions.")
        name = short(target.name)
        progress(f"moving 100% of traffic from {serving} to {name}")
        api.set_traffic(service, name, f"roll back {self.service} to {name}")
        return Deployment(url=str(service.uri), image=target.containers[0].image,
                          version=target.labels.get("model-version", "?"),
                          previous=current.containers[0].image if current is not None else None,
                          serving=_model_of(target) or None)

    def destroy(self) -> list[str]:
        api = self.api
        service = api.get()
        if service is None:
            return self.destroy_batch()
        api.check_owned(service)
        revisions = api.revisions()
        images = sorted({c.image.partition("@")[0] for r in revisions for c in r.containers[:1]})
        api.delete()
        count = len(revisions)
        kept = (f"Cloud Run service {self.full_name} ({count} revision{'s' * (count != 1)}); the Artifact "
                f"Registry repository {self.opts.registry_path} and its images are kept (delete them with "
                + " and ".join(f"`gcloud artifacts docker images delete {i}`" for i in images) + ")")
        return [*self.destroy_batch(), kept]


def _model_of(revision: Any, prefix: str = "") -> str:
    """``prefix`` + the code+model pair a revision's annotations record ("" when they record none: a revision
    made before mlship recorded it, or not by mlship)."""
    text = recorded_text(dict(revision.annotations), CLOUDRUN)
    return prefix + text if text else ""
