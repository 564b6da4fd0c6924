"""``targets.heroku`` in mlship.yaml: the options of the ``heroku`` target, validated strictly (errors name the key,
e.g. ``targets.heroku.dyno: Heroku has no dyno size 'standard-3x'; choose eco, basic, standard-1x, ...``), and the
dyno sizes mlship knows: memory quota and list price.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from mlship.targets.common import env_name, env_strings, plain_env_name


@dataclass(frozen=True)
class DynoSize:
    name: str
    quota_mib: int  # the memory quota Heroku enforces (R14 above it, R15 far above it)
    price: str  # list price, for the messages that suggest a size
    preboot: bool  # preboot (and more than one dyno) needs a Standard or Performance size


#: The Common Runtime's dyno sizes (Heroku's "Dyno Types" article; prices from its pricing page, per dyno and month).
DYNO_SIZES: dict[str, DynoSize] = {d.name: d for d in (
    DynoSize("eco", 512, "$5/month for a shared pool of 1000 hours (sleeps when idle)", False),
    DynoSize("basic", 512, "$7/month", False),
    DynoSize("standard-1x", 512, "$25/month", True),
    DynoSize("standard-2x", 1024, "$50/month", True),
    DynoSize("performance-m", 2560, "$250/month", True),
    DynoSize("performance-l", 14336, "$500/month", True),
    DynoSize("performance-l-ram", 30720, "$500/month", True),
    DynoSize("performance-xl", 63488, "$750/month", True),
    DynoSize("performance-2xl", 129024, "$1500/month", True),
)}
# set by the platform or by mlship: not an option's env
RESERVED_ENV = ("PORT", "DYNO", "MLSHIP_CREATED", "MLSHIP_SERVICE", "MLSHIP_LISTEN_WHEN_READY")
_APP = re.compile(r"^[a-z][a-z0-9-]{2,29}$")
_REGION = re.compile(r"^[a-z][a-z0-9-]{1,30}$")


def _env_name(key: str) -> str:
    return env_name(key, RESERVED_ENV, "Heroku or mlship")


def _plain_env_name(key: str) -> str:
    return plain_env_name(_env_name(key), readers="read the app's config vars",
                          store="a config var you set yourself (`heroku config:set NAME=... -a APP`)",
                          example="set-by-you")


PlainEnvName = Annotated[str, AfterValidator(_plain_env_name)]


class HerokuOptions(BaseModel):
    """``targets.heroku`` in mlship.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app: str = Field(description="The Heroku app (3 to 30 lowercase letters, digits and dashes, starting with a "
                                 "letter; globally unique on Heroku).")
    create: bool = Field(default=False, description="Create the app (container stack) when it does not exist; "
                         "`mlship destroy` then deletes it. Otherwise the app must exist.")
    region: str | None = Field(default=None, description="Region of a created app: us or eu (default: Heroku's, us).")
    team: str | None = Field(default=None, description="Create the app in this Heroku team (default: your account).")
    dyno: str = Field(default="standard-1x", description="Dyno size of the web dynos: " + ", ".join(DYNO_SIZES) + ".")
    quantity: int = Field(default=1, ge=1, le=100, description="Web dynos (eco and basic: 1).")
    preboot: bool | None = Field(default=None, description="Preboot: new dynos boot and answer before the old ones "
                                 "stop (no downtime; Standard and Performance sizes). Default: on where available.")
    quota_mb: int | None = Field(default=None, ge=1, description="The memory quota (MiB) the model must fit, instead "
                                 "of the dyno size's (e.g. to keep headroom).")
    env: dict[PlainEnvName, str | int | float | bool] = Field(
        default_factory=dict, description="Plain config vars of the app (never secrets: set those with "
        "`heroku config:set`; mlship only checks that the names the service needs are there).")

    @field_validator("app")
    @classmethod
    def _app(cls, value: str) -> str:
        if not _APP.match(value) or value.endswith("-") or "--" in value:
            raise ValueError("an app name has 3 to 30 characters: lowercase letters, digits and single dashes, "
                             "starting with a letter (e.g. iris-demo)")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not _REGION.match(value):
            raise ValueError("expected a region name such as us or eu (`heroku regions` lists them)")
        return value

    @field_validator("dyno")
    @classmethod
    def _dyno(cls, value: str) -> str:
        size = value.lower()
        if size not in DYNO_SIZES:
            raise ValueError(f"Heroku has no dyno size {value!r}; choose {', '.join(DYNO_SIZES)}")
        return size

    @field_validator("quantity")
    @classmethod
    def _quantity(cls, value: int, info: ValidationInfo) -> int:
        size = DYNO_SIZES.get(str(info.data.get("dyno")))
        if size is not None and not size.preboot and value > 1:
            raise ValueError(f"{size.name} dynos cannot scale beyond 1 web dyno; choose standard-1x or larger")
        return value

    @field_validator("preboot")
    @classmethod
    def _preboot(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        size = DYNO_SIZES.get(str(info.data.get("dyno")))
        if value and size is not None and not size.preboot:
            raise ValueError(f"preboot needs a Standard or Performance dyno, not {size.name}; set dyno: standard-1x "
                             "or preboot: false (the old dyno then stops before the new one starts)")
        return value

    @field_validator("team")
    @classmethod
    def _team(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not info.data.get("create"):
            raise ValueError("team only applies to an app mlship creates; set create: true, or remove team")
        return value

    @property
    def size(self) -> DynoSize:
        return DYNO_SIZES[self.dyno]

    @property
    def use_preboot(self) -> bool:
        return self.size.preboot if self.preboot is None else self.preboot

    @property
    def quota_mib(self) -> int:
        return self.quota_mb if self.quota_mb is not None else self.size.quota_mib

    def environment(self) -> dict[str, str]:
        return env_strings(self.env)
