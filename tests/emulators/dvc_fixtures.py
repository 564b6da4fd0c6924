"""A real DVC repository for the DVC-tracked artifact tests, made with the ``dvc`` CLI.

``make_dvc_repo(folder, model)``: ``git init`` + ``dvc init`` in ``folder/repo``, a local remote (a folder,
``folder/remote``) as the default, the project folder ``repo/svc`` holding ``model.joblib`` added with ``dvc add``
and pushed; then the workspace copy and DVC's own cache are removed, so the bytes exist only in the remote (as in a
fresh clone). ``dvc_repo`` is that for the iris model, per test (it takes about a second).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class DvcRepo:
    root: Path  # the DVC (and git) repository
    project: Path  # root / "svc": where mlship.yaml goes
    remote: Path  # the default remote, a local folder
    name: str  # model.joblib, relative to project
    data: bytes

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data, usedforsecurity=False).hexdigest()

    def remote_object(self) -> Path:
        """Where a DVC 3 local remote keeps the model's bytes."""
        return self.remote / "files" / "md5" / self.md5[:2] / self.md5[2:]

    def dvc(self, *args: str) -> str:
        return run_dvc(self.root, *args)


def run_dvc(cwd: Path, *args: str) -> str:
    exe = Path(sys.executable).parent / "dvc"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, f"dvc {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout


def make_dvc_repo(folder: Path, model: Path, name: str = "model.joblib") -> DvcRepo:
    root, remote = folder / "repo", folder / "remote"
    project = root / "svc"
    project.mkdir(parents=True)
    remote.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True, timeout=30)
    repo = DvcRepo(root=root, project=project, remote=remote, name=name, data=model.read_bytes())
    repo.dvc("init", "-q")
    repo.dvc("remote", "add", "-d", "storage", str(remote))
    shutil.copy(model, project / name)
    repo.dvc("add", "-q", f"svc/{name}")
    repo.dvc("push", "-q")
    assert repo.remote_object().read_bytes() == repo.data
    (project / name).unlink()
    shutil.rmtree(root / ".dvc" / "cache", ignore_errors=True)
    return repo


@pytest.fixture
def dvc_repo(tmp_path: Path, iris_model: Path) -> DvcRepo:
    return make_dvc_repo(tmp_path / "dvc", iris_model)
