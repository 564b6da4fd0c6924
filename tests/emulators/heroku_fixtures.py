"""Fixtures of the Heroku emulator (a test module names the ones it uses: ``heroku = heroku_fixtures.heroku``):

``heroku``: a running HerokuEmulator per module (fast limits: boot 8 s, stop grace 3 s; change them with
``heroku.set_limits``; ``heroku.api_key`` owns its apps and is in the team ``mlship-team``, ``heroku.other_key``
is an account that may see none of them); at its end every container it started is removed (label
``dev.mlship.test=heroku-emulator``) and the module fails if one was left or the dyno manager hit an error.
``heroku_env``: MLSHIP_HEROKU_API_URL, MLSHIP_HEROKU_REGISTRY and HEROKU_API_KEY pointed at it for one test (the
limits are reset to the module's after the test).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from emulators.heroku import HerokuEmulator
from emulators.heroku_dynos import Limits


def fast() -> Limits:
    """Heroku's limits, with an 8 s boot limit and a 3 s stop grace so that tests stay quick."""
    return Limits(boot_s=8.0, router_timeout_s=30.0, stop_grace_s=3.0)


@pytest.fixture(scope="module")
def heroku(docker_engine: Any, registry: str) -> Iterator[HerokuEmulator]:
    emulator = HerokuEmulator(docker_engine, upstream=registry, limits=fast()).start()
    try:
        yield emulator
    finally:
        emulator.stop()
        time.sleep(0.5)
        left = [c for c in emulator.containers() if c.status != "removing"]
        for container in left:
            container.remove(force=True)
        assert not left, f"containers left behind: {left}"
        assert emulator.errors == [], emulator.errors


@pytest.fixture
def heroku_env(heroku: HerokuEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[HerokuEmulator]:
    monkeypatch.setenv("MLSHIP_HEROKU_API_URL", heroku.api_url)
    monkeypatch.setenv("MLSHIP_HEROKU_REGISTRY", heroku.registry)
    monkeypatch.setenv("HEROKU_API_KEY", heroku.api_key)
    yield heroku
    defaults = fast()
    heroku.set_limits(boot_s=defaults.boot_s, router_timeout_s=defaults.router_timeout_s,
                      stop_grace_s=defaults.stop_grace_s)
    heroku.limits.quota_mb = dict(defaults.quota_mb)
