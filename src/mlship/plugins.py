"""Plugin registry: ``name -> class`` for runtimes and targets.

Built-in plugins are listed first (imported lazily, so `mlship --help` never imports a framework);
third-party plugins register through the entry-point groups ``mlship.runtimes`` and
``mlship.targets``. Two plugins claiming one name is an error that names both.

A third-party runtime is one class in an installed package::

    # pyproject.toml of the plugin package
    [project.entry-points."mlship.runtimes"]
    xgboost = "mlship_xgboost:XGBoostRuntime"

See :class:`mlship.runtimes.base.Runtime` for a complete example.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any

from mlship.errors import PluginError
from mlship.pycompat import entry_points_of

BUILTIN_RUNTIMES: dict[str, str] = {
    "sklearn": "mlship.runtimes.sklearn:SklearnRuntime",
    "tensorflow": "mlship.runtimes.tensorflow:TensorflowRuntime",
    "pytorch": "mlship.runtimes.pytorch:PytorchRuntime",
}
BUILTIN_TARGETS: dict[str, str] = {
    "local": "mlship.targets.local:LocalTarget",
    "cloudrun": "mlship.targets.cloudrun:CloudRunTarget",
    "ecs": "mlship.targets.ecs:EcsTarget",
    "heroku": "mlship.targets.heroku:HerokuTarget",
}

GROUPS = {"runtime": "mlship.runtimes", "target": "mlship.targets"}


def _import(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def available(kind: str) -> dict[str, str]:
    """Every registered plugin of a kind as ``name -> "module:Class"``; duplicates are errors."""
    return with_entry_points(BUILTIN_RUNTIMES if kind == "runtime" else BUILTIN_TARGETS, GROUPS[kind], kind)


def with_entry_points(builtin: dict[str, str], group: str, kind: str) -> dict[str, str]:
    """``builtin`` plus the entry points of ``group``; two plugins of one name are an error naming both."""
    found = dict(builtin)
    for ep in entry_points_of(group, entry_points):  # 3.9 too
        if ep.name in found and found[ep.name] != ep.value:
            raise PluginError(
                f"Two {kind} plugins are named `{ep.name}`: {found[ep.name]} and {ep.value}.",
                why="Each plugin name must be unique so mlship.yaml is unambiguous.",
                fix=f"Uninstall one of the packages providing {ep.value.split(':')[0]} "
                f"or {found[ep.name].split(':')[0]}.",
            )
        found[ep.name] = ep.value
    return found


def get(kind: str, name: str) -> Any:
    """The plugin class registered under ``name``; unknown names list the available ones."""
    plugins = available(kind)
    if name not in plugins:
        raise _unknown(kind, name, sorted(plugins))
    try:
        return _import(plugins[name])
    except ImportError as exc:
        raise PluginError(
            f"The {kind} `{name}` cannot be imported: {exc}.",
            why=f"It is provided by {plugins[name]}, which needs packages that are not installed.",
            fix=f"Install the missing package (e.g. `pip install 'mlship[{name}]'`).",
        ) from None
    except AttributeError as exc:
        raise PluginError(
            f"The {kind} `{name}` cannot be imported: {exc}.",
            why=f"Its entry point names {plugins[name]}, which that module does not define.",
            fix="Upgrade or reinstall the package that provides it.",
        ) from None


def _unknown(kind: str, name: str, names: list[str]) -> PluginError:
    """The error for an unknown plugin name: the nearest registered name (if any) and all of them."""
    near = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean `{near[0]}`?" if near else "."
    use = f"Use `{near[0]}`" if near else "Use one of those names"
    return PluginError(
        f"Unknown {kind} `{name}`{hint} Available: {', '.join(names) or '(none installed)'}.",
        fix=f"{use}, or install the package that provides the `{name}` {kind}.",
    )


def get_runtime(name: str) -> Any:
    return get("runtime", name)
