"""mlship.yaml parsing and validation: messages name the key, the line and a fix. Files, versions and hashes:
test_contract_files.py.
"""

from __future__ import annotations

import re

import pytest

from contract_helpers import MINIMAL, error_of
from mlship.contract import Feature
from mlship.contract_io import parse_contract
from mlship.errors import ContractError

# -- valid contracts ---------------------------------------------------------------------------------


def test_minimal_contract_gets_defaults() -> None:
    c = parse_contract(MINIMAL)
    assert c.name == "iris"
    assert c.runtime == "sklearn"
    assert c.task == "classification"
    assert c.feature_names == ["a", "b"]
    assert c.version is None
    assert c.examples == []
    assert c.output.labels is None
    assert c.dependencies.python == "3.11"
    assert c.dependencies.requirements == []
    assert c.serve.port == 8080
    assert c.serve.auth == "none"
    assert c.serve.api_keys_env == "MLSHIP_API_KEYS"


def test_feature_shorthand_equals_object_form() -> None:
    short = parse_contract(MINIMAL.replace("b: {type: int, minimum: 0}", "b: int"))
    full = parse_contract(MINIMAL.replace("a: float", "a: {type: float}").replace(", minimum: 0", ""))
    assert short.input.features == full.input.features
    assert short.input.features["a"] == Feature(type="float")
    assert short.input.features["b"] == Feature(type="int")


def test_feature_object_form_keeps_details() -> None:
    text = MINIMAL.replace(
        "a: float", "a: {type: str, description: Colour, enum: [red, green]}"
    ).replace("minimum: 0", "minimum: 0, maximum: 9")
    c = parse_contract(text)
    assert c.input.features["a"] == Feature(type="str", description="Colour", enum=["red", "green"])
    assert c.input.features["b"].minimum == 0
    assert c.input.features["b"].maximum == 9


def test_feature_order_is_preserved() -> None:
    text = MINIMAL.replace("    a: float\n", "    z: float\n    a: float\n    m: bool\n")
    assert parse_contract(text).feature_names == ["z", "a", "m", "b"]


def test_contract_is_frozen() -> None:
    c = parse_contract(MINIMAL)
    with pytest.raises(ValueError, match="frozen"):
        c.name = "other"  # type: ignore[misc]


# -- unknown keys --------------------------------------------------------------------------------------


def test_unknown_top_level_key_names_it_suggests_and_shows_line() -> None:
    err = error_of(MINIMAL.replace("runtime: sklearn", "runtim: sklearn"))
    assert "mlship.yaml is not a valid mlship contract" in err.message
    assert "mlship.yaml:2 -> runtim: unknown key `runtim`; did you mean `runtime`?" in err.message
    assert "Valid keys here: name, version, runtime, artifact" in err.message
    assert "runtime: required key is missing" in err.message
    assert err.fix is not None and "schema/mlship.schema.json" in err.fix


def test_unknown_key_uses_given_filename() -> None:
    with pytest.raises(ContractError, match=r"other\.yaml:1 -> nme: unknown key `nme`; did you mean `name`"):
        parse_contract(MINIMAL.replace("name: iris", "nme: iris"), "other.yaml")


def test_unknown_serve_key_suggests_timeout_s() -> None:
    err = error_of(MINIMAL + "serve:\n  port: 9000\n  timeout: 3\n")
    assert "mlship.yaml:11 -> serve.timeout: unknown key `timeout`; did you mean `timeout_s`?" in err.message
    assert "Valid keys here: port, max_body_bytes, max_instances, timeout_s" in err.message


def test_unknown_feature_key_suggests_type() -> None:
    err = error_of(MINIMAL.replace("{type: int, minimum: 0}", "{typ: int}"))
    assert "mlship.yaml:8 -> input.features.b.typ: unknown key `typ`; did you mean `type`?" in err.message
    assert "Valid keys here: type, description, minimum, maximum, enum" in err.message


def test_unknown_feature_key_in_block_form_points_at_its_line() -> None:
    text = MINIMAL.replace("    a: float\n", "    a:\n      type: float\n      maxmum: 3\n")
    err = error_of(text)
    assert "mlship.yaml:9 -> input.features.a.maxmum: unknown key `maxmum`; did you mean `maximum`?" in err.message


def test_unknown_example_key_suggests_output() -> None:
    text = MINIMAL + "examples:\n  - input: {a: 1.0, b: 2}\n    outptu: {label: x}\n"
    err = error_of(text)
    assert "mlship.yaml:11 -> examples.0.outptu: unknown key `outptu`; did you mean `output`?" in err.message


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    err = error_of(MINIMAL + "  zzz: 1\n")
    assert "mlship.yaml:9 -> input.zzz: unknown key `zzz`. Valid keys here: features" in err.message
    assert "did you mean" not in err.message


# -- YAML errors -----------------------------------------------------------------------------------------


def test_tab_indentation_shows_line_and_column() -> None:
    err = error_of("name: iris\n\truntime: sklearn\n")
    assert err.message.startswith("mlship.yaml:2:1: not valid YAML:")
    assert "'\\t'" in err.message
    assert err.fix == "Check the indentation and quoting near that line."


def test_bad_indentation_shows_line_and_column() -> None:
    err = error_of("name: iris\nruntime: sklearn\n  artifact: x\n")
    assert re.match(r"mlship\.yaml:3:\d+: not valid YAML: mapping values are not allowed here", err.message)


def test_unclosed_bracket_is_a_yaml_error() -> None:
    err = error_of(MINIMAL + "output:\n  labels: [a, b\n")
    assert re.match(r"mlship\.yaml:\d+:\d+: not valid YAML", err.message), err.message


@pytest.mark.parametrize(("text", "kind"), [("- name: iris\n- runtime: x\n", "list"), ("just text\n", "str")])
def test_top_level_must_be_a_mapping(text: str, kind: str) -> None:
    err = error_of(text)
    assert err.message == (
        f"mlship.yaml: expected a mapping of keys (name, runtime, artifact, ...), got {kind}."
    )
    assert err.fix is not None and "mlship init" in err.fix


def test_empty_file_is_an_error() -> None:
    err = error_of("")
    assert "expected a mapping of keys" in err.message


# -- values -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Iris", "iris_model", "1iris", "iris-", "-iris", "a" * 64, "iris.v2"])
def test_name_must_be_dns_safe(name: str) -> None:
    err = error_of(MINIMAL.replace("name: iris", f"name: '{name}'"))
    assert "mlship.yaml:1 -> name:" in err.message
    assert name in err.message


@pytest.mark.parametrize("name", ["a", "iris", "iris-v2", "m" * 63])
def test_dns_safe_names_are_accepted(name: str) -> None:
    assert parse_contract(MINIMAL.replace("name: iris", f"name: {name}")).name == name


def test_wrong_feature_type_names_allowed_types() -> None:
    err = error_of(MINIMAL.replace("a: float", "a: double"))
    assert "mlship.yaml:7 -> input.features.a.type:" in err.message
    assert "'float', 'int', 'str' or 'bool'" in err.message
    assert "got 'double'" in err.message


@pytest.mark.parametrize(
    ("serve", "path", "text"),
    [
        ("timeout_s: -1", "serve.timeout_s", "greater than 0, got -1"),
        ("timeout_s: 0", "serve.timeout_s", "greater than 0, got 0"),
        ("port: 70000", "serve.port", "must be a TCP port number 1-65535, got 70000"),
        ("threads: 0", "serve.threads", "greater than or equal to 1, got 0"),
        ("max_body_bytes: 10", "serve.max_body_bytes", "greater than or equal to 256, got 10"),
        ("auth: token", "serve.auth", "'none' or 'api_key', got 'token'"),
        ("api_keys_env: 'MY-KEYS'", "serve.api_keys_env", "got 'MY-KEYS'"),
        ("compile: on", "serve.compile", "YAML read on/yes/true as a boolean; write auto"),
    ],
)
def test_bad_serve_values_name_the_field(serve: str, path: str, text: str) -> None:
    err = error_of(MINIMAL + f"serve:\n  {serve}\n")
    assert f"mlship.yaml:10 -> {path}:" in err.message
    assert text in err.message


@pytest.mark.parametrize("value", ["off", "'off'", "no", "false"])
def test_compile_off_unquoted_is_off(value: str) -> None:
    # YAML 1.1 reads an unquoted off (and no, false) as a boolean
    assert parse_contract(MINIMAL + f"serve:\n  compile: {value}\n").serve.compile == "off"


def test_non_numeric_timeout_is_rejected() -> None:
    err = error_of(MINIMAL + "serve:\n  timeout_s: soon\n")
    assert "serve.timeout_s" in err.message
    assert "got 'soon'" in err.message


def test_unknown_task_is_rejected() -> None:
    err = error_of(MINIMAL.replace("task: classification", "task: clustering"))
    assert "mlship.yaml:4 -> task:" in err.message
    assert "'classification' or 'regression'" in err.message


def test_missing_required_keys_are_listed() -> None:
    err = error_of("name: iris\nruntime: sklearn\n")
    for key in ("artifact", "task", "input"):
        assert f"-> {key}: required key is missing" in err.message


def test_features_must_not_be_empty() -> None:
    err = error_of(MINIMAL.replace("    a: float\n    b: {type: int, minimum: 0}\n", "    {}\n"))
    assert "input.features" in err.message
    assert "at least 1 item" in err.message


def test_minimum_above_maximum_is_rejected() -> None:
    err = error_of(MINIMAL.replace("minimum: 0", "minimum: 5, maximum: 1"))
    assert "input.features.b: minimum 5.0 is larger than maximum 1.0" in err.message


def test_bounds_only_apply_to_numbers() -> None:
    err = error_of(MINIMAL.replace("a: float", "a: {type: str, minimum: 1}"))
    assert "input.features.a: minimum/maximum only apply to float and int features, not str" in err.message


def test_example_missing_a_feature_is_rejected() -> None:
    err = error_of(MINIMAL + "examples:\n  - input: {a: 1.0}\n")
    assert "examples[0].input does not match input.features; missing ['b']" in err.message


def test_example_with_unknown_feature_is_rejected() -> None:
    err = error_of(MINIMAL + "examples:\n  - input: {a: 1.0, b: 2}\n  - input: {a: 1.0, b: 2, c: 3}\n")
    assert "examples[1].input does not match input.features; unknown ['c']" in err.message


def test_negative_example_tolerance_is_rejected() -> None:
    err = error_of(MINIMAL + "examples:\n  - input: {a: 1.0, b: 2}\n    tolerance: -1\n")
    assert "examples.0.tolerance" in err.message


def test_labels_require_classification() -> None:
    text = MINIMAL.replace("task: classification", "task: regression") + "output:\n  labels: [x, y]\n"
    err = error_of(text)
    assert "output.labels only apply to task: classification" in err.message


@pytest.mark.parametrize("ref", ["predict:func", "predict.py", "predict.py:", "predict.py:1func", ":func"])
def test_predict_ref_needs_file_and_function(ref: str) -> None:
    err = error_of(MINIMAL + f"predict: '{ref}'\n")
    assert f"mlship.yaml:9 -> predict: expected `file.py:function`, got {ref!r}" in err.message
    assert err.message.count("got ") == 1, err.message


def test_load_ref_is_checked_too() -> None:
    err = error_of(MINIMAL + "load: loader\n")
    assert "-> load: expected `file.py:function`, got 'loader'" in err.message


def test_python_version_pattern() -> None:
    err = error_of(MINIMAL + "dependencies:\n  python: '3'\n")
    assert "dependencies.python" in err.message
    assert parse_contract(MINIMAL + "dependencies:\n  python: '3.12'\n").dependencies.python == "3.12"
