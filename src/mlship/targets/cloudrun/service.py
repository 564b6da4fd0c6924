"""One Cloud Run service through the Admin API v2: get, create, update, delete, its revisions, its traffic
and its IAM policy. Every call goes through :class:`~mlship.targets.cloudrun.api.Gcp` (retries, errors);
the deploy policy (what to change, when traffic moves) is :mod:`mlship.targets.cloudrun`'s.
"""

from __future__ import annotations

import secrets
import string
import time
from typing import Any

from google.cloud import run_v2

from mlship import __version__
from mlship.errors import TargetError
from mlship.targets.base import Progress
from mlship.targets.cloudrun.api import Gcp, api_error
from mlship.targets.cloudrun.spec import (
    CANDIDATE_TAG,
    LATEST,
    MANAGED_BY,
    REVISION,
    ready_state,
    short,
    traffic_split,
)

INVOKER = "roles/run.invoker"


def traffic(revision: str | None, percent: int = 100, tag: str = "") -> Any:
    """A traffic target: ``revision`` by name, or the latest ready revision when None."""
    if revision is None:
        return run_v2.TrafficTarget(type_=LATEST, percent=percent, tag=tag)
    return run_v2.TrafficTarget(type_=REVISION, revision=revision, percent=percent, tag=tag)


class ServiceApi:
    """``projects/P/locations/R/services/NAME`` (see the module docstring)."""

    def __init__(self, gcp: Gcp, name: str, *, revision_wait_s: float) -> None:
        self.gcp = gcp
        self.id = name
        self.parent = f"projects/{gcp.opts.project}/locations/{gcp.opts.region}"
        self.name = f"{self.parent}/services/{name}"
        self.revision_wait_s = revision_wait_s

    # --- the service ------------------------------------------------------------------------------
    def get(self, required: bool = False) -> Any:
        service = self.gcp.get(f"get service {self.id}", self.gcp.services.get_service, self.name)
        if service is None and required:
            raise TargetError(f"Service {self.name} disappeared during the deploy.", fix="Deploy again.")
        return service

    def check_owned(self, service: Any) -> None:
        if service.labels.get(MANAGED_BY[0]) != MANAGED_BY[1]:
            raise TargetError(
                f"A Cloud Run service {self.name} exists, but mlship did not create it.",
                why=f"It has no label {MANAGED_BY[0]}={MANAGED_BY[1]}, so mlship does not touch it.",
                fix="Rename the service (`name` in mlship.yaml), or add the label if mlship should manage it.")

    def new_revision_name(self, generation: int) -> str:
        suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(3))
        return f"{self.id}-{generation + 1:05d}-{suffix}"

    def create(self, template: Any, labels: dict[str, str]) -> tuple[Any, BaseException | None]:
        """Create the service (100% of traffic to its first revision); (service, the operation's error)."""
        service = run_v2.Service(labels=labels, ingress="INGRESS_TRAFFIC_ALL", template=template,
                                 traffic=[traffic(None)], client="mlship", client_version=__version__)
        what = f"create service {self.id}"
        op = self.gcp.rpc(what, "create", self.gcp.services.create_service,
                          {"parent": self.parent, "service": service, "service_id": self.id})
        error = self.gcp.wait(what, op)
        return self.get(required=True), error

    def update_template(self, service: Any, template: Any, labels: dict[str, str],
                        previous: str | None) -> tuple[Any, BaseException | None]:
        """A new revision from ``template``. With a ``previous`` revision, traffic stays 100% on it and the
        new one gets 0% and the tag ``mlship-candidate``; (service, the operation's error)."""
        service.template, service.labels, service.ingress = template, labels, "INGRESS_TRAFFIC_ALL"
        service.client, service.client_version = "mlship", __version__
        service.traffic = ([traffic(previous), traffic(template.revision, 0, CANDIDATE_TAG)] if previous
                           else [traffic(None)])
        error = self.update(service, f"update service {self.id}", fail=False)
        return self.get(required=True), error

    def update(self, service: Any, what: str, *, fail: bool = True) -> BaseException | None:
        """PATCH the whole service and wait; the operation's error is raised (``fail``) or returned."""
        service.etag = ""  # last writer wins: a retried update must not fail on its own first attempt
        op = self.gcp.rpc(what, "update", self.gcp.services.update_service, {"service": service})
        error = self.gcp.wait(what, op)
        if error is not None and fail:
            raise api_error(error, what, self.gcp.opts, "update")
        return error

    def set_traffic(self, service: Any, revision: str | None, what: str) -> Any:
        """Route 100% to ``revision`` (None: the latest ready revision); returns the updated service.

        The operation may report the service not Ready when its latest revision failed although the
        traffic did move, so the outcome is judged by the traffic actually served.
        """
        service.traffic = [traffic(revision)]
        error = self.update(service, what, fail=False)
        fresh = self.get(required=True)
        if error is not None and traffic_split(fresh) != {revision or short(fresh.latest_ready_revision): 100}:
            raise api_error(error, what, self.gcp.opts, "update")
        return fresh

    def delete(self) -> None:
        what = f"delete service {self.id}"
        error = self.gcp.wait(what, self.gcp.rpc(what, "delete", self.gcp.services.delete_service,
                                                 {"name": self.name}))
        if error is not None:
            raise api_error(error, what, self.gcp.opts, "delete")

    # --- revisions --------------------------------------------------------------------------------
    def revisions(self) -> list[Any]:
        """The service's revisions, newest first."""
        pager = self.gcp.rpc(f"list revisions of {self.id}", "list", self.gcp.revisions.list_revisions,
                             {"parent": self.name})
        return sorted(pager, key=lambda r: (r.create_time.timestamp() if r.create_time else 0, r.name),
                      reverse=True)

    def revision(self, name: str) -> Any:
        return self.gcp.get(f"get revision {name}", self.gcp.revisions.get_revision, f"{self.name}/revisions/{name}")

    def wait_revision(self, name: str) -> Any:
        """The revision once its Ready condition is terminal (or the wait is over)."""
        deadline = time.monotonic() + self.revision_wait_s
        while True:
            revision = self.gcp.rpc(f"get revision {name}", "get", self.gcp.revisions.get_revision,
                                    {"name": f"{self.name}/revisions/{name}"})
            if ready_state(revision)[0] != "pending" or time.monotonic() > deadline:
                return revision
            time.sleep(self.gcp.poll_s)

    def latest_state(self, service: Any) -> str:
        """ready, failed or pending: the latest created revision (waits while it is being deployed)."""
        name = short(service.latest_created_revision)
        if not name:
            return "failed"
        if name == short(service.latest_ready_revision):
            return "ready"
        return ready_state(self.wait_revision(name))[0]

    # --- IAM --------------------------------------------------------------------------------------
    def ensure_invoker(self, public: bool, progress: Progress) -> None:
        """roles/run.invoker for allUsers iff ``public``; no call that changes anything when it matches."""
        gcp = self.gcp
        policy = gcp.rpc(f"get IAM policy of {self.id}", "iam", gcp.services.get_iam_policy, {"resource": self.name})
        binding = next((b for b in policy.bindings if b.role == INVOKER), None)
        if (binding is not None and "allUsers" in binding.members) == public:
            return
        if binding is None:
            binding = policy.bindings.add(role=INVOKER)
        if public:
            binding.members.append("allUsers")
            progress(f"granting {INVOKER} to allUsers: {self.id} is public")
        else:
            binding.members.remove("allUsers")
            if not binding.members:
                policy.bindings.remove(binding)
            progress(f"removing allUsers from {INVOKER}: {self.id} is private")
        gcp.rpc(f"set IAM policy of {self.id}", "iam", gcp.services.set_iam_policy,
                {"resource": self.name, "policy": policy})
