"""Operations, IAM policies and Artifact Registry repositories in the Cloud Run emulator
(tests/emulators/cloudrun.py). A mixin of ``CloudRunEmulator``, which holds the state.
"""

from __future__ import annotations

import base64
import copy
import os
import re
import uuid
from typing import Any

from emulators._checks import ApiError, bad
from emulators.cloudrun_model import AR_META_TYPE, REPO_TYPE, SERVICE_TYPE, Service, timestamp
from emulators.cloudrun_revisions import Revisions


class Operations(Revisions):
    """Long-running operations, ``setIamPolicy`` and the Artifact Registry routes (see the module docstring)."""

    registry: str
    repositories: dict[str, dict[str, Any]]

    def _set_iam_policy(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        svc = self._service(m[1])
        policy = body.get("policy")
        if not isinstance(policy, dict):
            raise bad("policy", "A policy is required.")
        if policy.get("etag") and policy["etag"] != svc.policy["etag"]:
            raise ApiError(409, "There were concurrent policy changes. Please retry the whole read-modify-write "
                                "with exponential backoff.", status="ABORTED")
        for i, binding in enumerate(policy.get("bindings", [])):
            if not str(binding.get("role", "")).startswith("roles/"):
                raise bad(f"policy.bindings[{i}].role", f"Role {binding.get('role')!r} is not a role name.")
            for member in binding.get("members", []):
                if member not in ("allUsers", "allAuthenticatedUsers") and not re.match(
                        r"(user|serviceAccount|group|domain|principal|principalSet):.+", member):
                    raise bad(f"policy.bindings[{i}].members", f"Invalid member: {member!r}.")
        svc.policy = {"version": policy.get("version") or 1, "bindings": policy.get("bindings", []),
                      "etag": base64.b64encode(os.urandom(8)).decode()}
        return svc.policy

    # --- operations and Artifact Registry ---------------------------------------------------------
    def _operation(self, target: str, *, done: bool, response: dict[str, Any] | None, type_: str,
                   metadata: dict[str, Any] | None = None, meta_type: str = "") -> dict[str, Any]:
        location = "/".join(target.split("/")[:4])
        op: dict[str, Any] = {"name": f"{location}/operations/{uuid.uuid4()}", "done": done,
                              "metadata": {"@type": meta_type or type_,
                                           **(metadata if metadata is not None else response or {})}}
        if done:
            op["response"] = {"@type": type_, **(response or {})}
        self.operations[op["name"]] = op
        return op

    def _pending_operation(self, svc: Service, revision: str = "") -> dict[str, Any]:
        """An operation that is done once the service has reconciled (failed if ``revision`` failed)."""
        op = self._operation(svc.name, done=False, response=None, type_=SERVICE_TYPE, metadata=self._render(svc))
        self._waiting.append((op["name"], svc.name, svc.generation, revision))
        self._reconcile(svc)
        return self.operations[op["name"]]

    def _get_operation(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        if m[1] not in self.operations:
            raise ApiError(404, f"Operation '{m[1]}' not found.")
        return copy.deepcopy(self.operations[m[1]])

    def _create_repository(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        rid = query.get("repositoryId", "")
        if not re.fullmatch(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?", rid):
            raise bad("repository_id", f"Invalid repository id '{rid}'.")
        if body.get("format") not in ("DOCKER", 1):
            raise bad("repository.format", "Only DOCKER repositories are emulated; set format: DOCKER.")
        name = f"projects/{m[1]}/locations/{m[2]}/repositories/{rid}"
        if name in self.repositories:
            raise ApiError(409, f"the repository already exists: {name}")
        now = timestamp()
        self.repositories[name] = {**{k: v for k, v in body.items() if k in ("description", "labels", "mode")},
                                   "name": name, "format": "DOCKER", "createTime": now, "updateTime": now,
                                   "registryUri": f"{self.registry}/{m[1]}/{rid}"}
        return self._operation(name, done=True, response=self.repositories[name], type_=REPO_TYPE,
                               metadata={}, meta_type=AR_META_TYPE)

    def _get_repository(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        if m[1] not in self.repositories:
            raise ApiError(404, f"Requested entity was not found. (repository {m[1]})")
        return self.repositories[m[1]]
