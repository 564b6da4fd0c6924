"""The plugin registry: built-ins, entry points, duplicates and broken plugins."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from mlship import plugins
from mlship.errors import PluginError
from mlship.init import detect_runtime
from mlship.runtimes.sklearn import SklearnRuntime

GROUP = "mlship.runtimes"

FAKE_RUNTIME = '''
from mlship.runtimes.base import ArtifactInfo, ModelOutput, Runtime


class FakeRuntime(Runtime):
    name = "fake"
    extensions = (".fake",)

    def load(self, path):
        return path.read_text()

    def inspect(self, model, path):
        return ArtifactInfo(task="regression", features={"x": "float"})

    def predict(self, model, rows, features):
        return ModelOutput(values=[row[0] * 2 for row in rows])
'''


def use_entry_points(monkeypatch: pytest.MonkeyPatch, *eps: tuple[str, str]) -> None:
    """Pretend the installed packages register ``(name, "module:Class")`` runtimes."""
    fake = [EntryPoint(name, value, GROUP) for name, value in eps]

    def entry_points(*, group: str) -> list[EntryPoint]:
        return [ep for ep in fake if ep.group == group]

    monkeypatch.setattr(plugins, "entry_points", entry_points)


@pytest.fixture
def fake_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An importable module `mlship_fake_rt` defining FakeRuntime (removed from sys.modules after)."""
    (tmp_path / "mlship_fake_rt.py").write_text(textwrap.dedent(FAKE_RUNTIME))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mlship_fake_rt"
    sys.modules.pop("mlship_fake_rt", None)


def test_builtin_sklearn() -> None:
    assert plugins.get_runtime("sklearn") is SklearnRuntime
    assert plugins.available("runtime")["sklearn"] == "mlship.runtimes.sklearn:SklearnRuntime"


def test_builtin_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    use_entry_points(monkeypatch)
    assert plugins.available("target") == {
        "cloudrun": "mlship.targets.cloudrun:CloudRunTarget",
        "ecs": "mlship.targets.ecs:EcsTarget",
        "heroku": "mlship.targets.heroku:HerokuTarget",
        "local": "mlship.targets.local:LocalTarget",
    }
    with pytest.raises(PluginError, match=r"^Unknown target `aws`\. Available: cloudrun, ecs, heroku, local\.$"):
        plugins.get("target", "aws")


@pytest.mark.parametrize(("kind", "name", "near"), [
    ("target", "cloudrn", "cloudrun"), ("target", "locl", "local"), ("runtime", "sklern", "sklearn"),
    ("runtime", "pytorh", "pytorch"), ("runtime", "tensorflw", "tensorflow"),
])
def test_unknown_name_suggests_the_nearest(monkeypatch: pytest.MonkeyPatch, kind: str, name: str, near: str) -> None:
    use_entry_points(monkeypatch)
    names = ", ".join(sorted(plugins.available(kind)))
    with pytest.raises(PluginError) as info:
        plugins.get(kind, name)
    assert info.value.message == f"Unknown {kind} `{name}`; did you mean `{near}`? Available: {names}."
    assert info.value.fix == f"Use `{near}`, or install the package that provides the `{name}` {kind}."


def test_unknown_runtime_lists_available() -> None:
    with pytest.raises(PluginError) as info:
        plugins.get_runtime("nope")
    assert info.value.message == f"Unknown runtime `nope`. Available: {', '.join(sorted(plugins.BUILTIN_RUNTIMES))}."
    assert info.value.fix is not None and "`nope` runtime" in info.value.fix
    assert info.value.exit_code == 2


def test_entry_point_runtime_is_resolvable(monkeypatch: pytest.MonkeyPatch, fake_module: str,
                                           tmp_path: Path) -> None:
    use_entry_points(monkeypatch, ("fake", f"{fake_module}:FakeRuntime"))
    assert plugins.available("runtime") == {**plugins.BUILTIN_RUNTIMES, "fake": "mlship_fake_rt:FakeRuntime"}
    cls = plugins.get_runtime("fake")
    assert cls.__name__ == "FakeRuntime"
    assert cls.__module__ == fake_module
    artifact = tmp_path / "m.fake"
    artifact.write_text("weights")
    runtime = cls()
    assert runtime.load(artifact) == "weights"
    assert runtime.predict(None, [[1.5], [2.0]], ["x"]).values == [3.0, 4.0]
    assert detect_runtime(artifact) == "fake"
    assert detect_runtime(tmp_path / "m.joblib") == "sklearn"
    names = ", ".join(sorted([*plugins.BUILTIN_RUNTIMES, "fake"]))
    with pytest.raises(PluginError, match=rf"Unknown runtime `other`\. Available: {names}\."):
        plugins.get_runtime("other")


def test_duplicate_of_builtin_names_both(monkeypatch: pytest.MonkeyPatch) -> None:
    use_entry_points(monkeypatch, ("sklearn", "other_pkg.rt:OtherSklearn"))
    with pytest.raises(PluginError) as info:
        plugins.get_runtime("sklearn")
    err = info.value
    assert err.message == ("Two runtime plugins are named `sklearn`: mlship.runtimes.sklearn:SklearnRuntime "
                           "and other_pkg.rt:OtherSklearn.")
    assert err.fix is not None
    assert "other_pkg.rt" in err.fix and "mlship.runtimes.sklearn" in err.fix
    assert err.exit_code == 2


def test_duplicate_entry_points_name_both(monkeypatch: pytest.MonkeyPatch) -> None:
    use_entry_points(monkeypatch, ("xgb", "pkg_a:XGB"), ("xgb", "pkg_b:XGB"))
    with pytest.raises(PluginError, match=r"Two runtime plugins are named `xgb`: pkg_a:XGB and pkg_b:XGB\."):
        plugins.available("runtime")
    with pytest.raises(PluginError, match="Two runtime plugins"):
        plugins.get_runtime("sklearn")  # any lookup fails: the registry is ambiguous


def test_same_entry_point_seen_twice_is_not_a_duplicate(monkeypatch: pytest.MonkeyPatch) -> None:
    use_entry_points(monkeypatch, ("sklearn", "mlship.runtimes.sklearn:SklearnRuntime"))
    assert plugins.get_runtime("sklearn") is SklearnRuntime


def test_entry_point_that_cannot_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    use_entry_points(monkeypatch, ("onnx", "mlship_no_such_module_xyz:OnnxRuntime"))
    with pytest.raises(PluginError) as info:
        plugins.get_runtime("onnx")
    err = info.value
    assert err.message.startswith("The runtime `onnx` cannot be imported: No module named 'mlship_no_such_module_xyz'")
    assert err.why is not None and "mlship_no_such_module_xyz:OnnxRuntime" in err.why
    assert err.fix == "Install the missing package (e.g. `pip install 'mlship[onnx]'`)."


def test_entry_point_whose_dependency_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "mlship_needs_dep.py").write_text("import some_framework_not_installed_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    use_entry_points(monkeypatch, ("framework", "mlship_needs_dep:Runtime"))
    with pytest.raises(PluginError, match="`framework` cannot be imported: No module named "
                       "'some_framework_not_installed_xyz'") as info:
        plugins.get_runtime("framework")
    assert info.value.fix is not None and "pip install" in info.value.fix


def test_entry_point_naming_a_missing_class(monkeypatch: pytest.MonkeyPatch) -> None:
    use_entry_points(monkeypatch, ("ghost", "mlship.runtimes.sklearn:GhostRuntime"))
    with pytest.raises(PluginError) as info:
        plugins.get_runtime("ghost")
    assert info.value.message.startswith("The runtime `ghost` cannot be imported:")
    assert "GhostRuntime" in info.value.message
    assert info.value.exit_code == 2
