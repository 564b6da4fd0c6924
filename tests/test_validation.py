"""The input Validator (named features: types, bounds, paths of every error, body shapes, caps), sample_instance
(a valid instance from the schema alone), and the Validator's fast paths checked against the path that lists
every problem (hypothesis: objects and arrays of values).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import outcome, slow_validator
from mlship.contract import Feature
from mlship.serving.validation import MAX_ERRORS, InvalidInput, Validator, sample_instance

# -- Validator -----------------------------------------------------------------------------------------------------


def validator(max_instances: int = 1000, **features: Feature) -> Validator:
    return Validator(features, max_instances)


def errors_of(v: Validator, body: Any) -> list[dict[str, Any]]:
    with pytest.raises(InvalidInput) as info:
        v.validate(body)
    return info.value.errors


def test_int_feature_accepts_whole_floats_only() -> None:
    v = validator(n=Feature(type="int"))
    batch = v.validate({"n": 3.0})
    assert batch.rows == [[3]] and type(batch.rows[0][0]) is int
    assert batch.single is True
    for bad in (3.5, True, "3", None):
        [err] = errors_of(v, {"n": bad})
        assert err["loc"] == ["body", "n"]
        assert err["msg"] == "expected an integer"
        assert err["expected"] == "int"


def test_float_feature() -> None:
    v = validator(x=Feature(type="float"))
    batch = v.validate({"x": 2})
    assert batch.rows == [[2.0]] and type(batch.rows[0][0]) is float
    assert errors_of(v, {"x": True})[0]["msg"] == "expected a number"
    assert errors_of(v, {"x": "1.5"})[0]["got"] == "string '1.5'"
    assert errors_of(v, {"x": math.inf})[0]["msg"] == "expected a finite number"
    assert errors_of(v, {"x": math.nan})[0]["msg"] == "expected a finite number"


def test_bool_feature() -> None:
    v = validator(flag=Feature(type="bool"))
    assert v.validate({"flag": False}).rows == [[False]]
    for bad in (1, 0, "true", None):
        assert errors_of(v, {"flag": bad})[0]["msg"] == "expected true or false"


def test_str_enum_feature() -> None:
    v = validator(colour=Feature(type="str", enum=["red", "green"]))
    assert v.validate({"colour": "green"}).rows == [["green"]]
    [err] = errors_of(v, {"colour": "blue"})
    assert err == {"loc": ["body", "colour"], "msg": "not one of the allowed values", "type": "value_error",
                   "expected": "str in red, green", "got": "string 'blue'"}
    assert errors_of(v, {"colour": 1})[0]["msg"] == "expected a string"


def test_minimum_and_maximum() -> None:
    v = validator(x=Feature(type="float", minimum=0, maximum=10), n=Feature(type="int", minimum=1))
    assert v.validate({"x": 0, "n": 1}).rows == [[0.0, 1]]
    assert v.validate({"x": 10.0, "n": 99}).rows == [[10.0, 99]]
    [low] = errors_of(v, {"x": -0.1, "n": 1})
    assert low["msg"] == "must be >= 0"
    assert low["expected"] == "float >= 0 <= 10"
    [high] = errors_of(v, {"x": 10.5, "n": 1})
    assert high["msg"] == "must be <= 10"
    assert errors_of(v, {"x": 1, "n": 0})[0]["loc"] == ["body", "n"]


def test_instances_are_rows_in_feature_order() -> None:
    v = validator(a=Feature(type="float"), b=Feature(type="str"))
    batch = v.validate({"instances": [{"b": "x", "a": 1.0}, {"a": 2.0, "b": "y"}]})
    assert batch.rows == [[1.0, "x"], [2.0, "y"]]
    assert batch.single is False


def test_missing_and_unknown_features_have_paths() -> None:
    v = validator(a=Feature(type="float"), b=Feature(type="float"))
    errs = errors_of(v, {"instances": [{"a": 1.0, "b": 2.0}, {"a": 1.0, "c": 3}]})
    assert [(e["loc"], e["msg"]) for e in errs] == [
        (["body", "instances", 1, "b"], "field required"),
        (["body", "instances", 1, "c"], "unknown feature"),
    ]
    assert errs[0]["got"] == "nothing"
    assert errs[1]["expected"] == "one of a, b"


def test_max_instances() -> None:
    v = validator(max_instances=2, a=Feature(type="float"))
    assert len(v.validate({"instances": [{"a": 1.0}] * 2}).rows) == 2
    [err] = errors_of(v, {"instances": [{"a": 1.0}] * 3})
    assert err["loc"] == ["body", "instances"]
    assert err["msg"] == "too many instances (limit 2)"
    assert err["got"] == "3"


@pytest.mark.parametrize(
    ("body", "loc", "msg"),
    [
        ({"instances": []}, ["body", "instances"], "`instances` is empty"),
        ({"instances": {"a": 1}}, ["body", "instances"], "`instances` must be an array of objects or arrays"),
        ({"instances": [1.0]}, ["body", "instances", 0],
         "each instance must be an object of features or an array of values"),
        ({"instances": [{"a": 1.0}], "extra": 1}, ["body", "extra"], "unknown key next to `instances`"),
        ([], ["body"], "the array of instances is empty"),
        ("a", ["body"],
         'expected one instance as an object of features, {"instances": [...]} or an array of instances'),
    ],
)
def test_body_shape_errors(body: Any, loc: list[Any], msg: str) -> None:
    [err] = errors_of(validator(a=Feature(type="float")), body)
    assert err["loc"] == loc
    assert err["msg"] == msg


def test_errors_are_capped() -> None:
    v = validator(a=Feature(type="float"))
    errs = errors_of(v, {"instances": [{"a": "bad"}] * 50})
    assert len(errs) == MAX_ERRORS
    assert errs[-1]["loc"] == ["body", "instances", MAX_ERRORS - 1, "a"]


def test_feature_named_instances_is_a_plain_feature() -> None:
    v = validator(instances=Feature(type="int"))
    batch = v.validate({"instances": 3})
    assert batch.rows == [[3]] and batch.single is True


def test_long_values_are_shortened_in_errors() -> None:
    [err] = errors_of(validator(a=Feature(type="float")), {"a": "x" * 100})
    assert len(err["got"]) < 60
    assert err["got"].endswith("...")


# -- sample_instance ---------------------------------------------------------------------------------------------


def test_sample_instance_values() -> None:
    features = {
        "f": Feature(type="float"),
        "i": Feature(type="int"),
        "s": Feature(type="str"),
        "b": Feature(type="bool"),
        "e": Feature(type="str", enum=["red", "green"]),
        "low": Feature(type="int", minimum=2.5),
        "neg": Feature(type="float", maximum=-3),
        "pos_max": Feature(type="float", maximum=5),
    }
    assert sample_instance(features) == {"f": 0.0, "i": 0, "s": "", "b": False, "e": "red", "low": 3,
                                         "neg": -3.0, "pos_max": 0.0}


@pytest.mark.parametrize(
    "feature",
    [
        Feature(type="float"),
        Feature(type="int", minimum=2.5, maximum=9),
        Feature(type="int", maximum=-2.5),
        Feature(type="int", minimum=-7.5),
        Feature(type="float", minimum=1, maximum=1),
        Feature(type="int", enum=[4, 5]),
        Feature(type="bool"),
        Feature(type="str", enum=["only"]),
    ],
)
def test_sample_instance_is_valid(feature: Feature) -> None:
    features = {"v": feature}
    instance = sample_instance(features)
    assert Validator(features, 1).validate(instance).rows == [[instance["v"]]]


# -- the validator's fast paths agree with the path that lists every problem ---------------------------------
UNIFORM = {"a": Feature(type="float"), "b": Feature(type="float"), "c": Feature(type="float")}
MIXED = {"x": Feature(type="float", minimum=0, maximum=10), "n": Feature(type="int", enum=[1, 2, 3]),
         "s": Feature(type="str"), "f": Feature(type="bool")}
field_values = (st.none() | st.booleans() | st.integers(-5, 15) | st.text(max_size=2)
                | st.floats(allow_nan=True, allow_infinity=True) | st.lists(st.integers(), max_size=2))
# a value in an array of values (the value-rows test): no nested lists
row_values = (st.none() | st.booleans() | st.integers(-5, 15) | st.text(max_size=2)
              | st.floats(allow_nan=True, allow_infinity=True))


@pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")
@settings(max_examples=400, deadline=None)
@given(data=st.data(), mixed=st.booleans())
def test_fast_validation_agrees_with_the_slow_path(data: st.DataObject, mixed: bool) -> None:
    features = MIXED if mixed else UNIFORM
    names = [*features, "other"]
    # mostly valid instances (the fast paths' case), with values of other types or out of range mixed in
    valid = (st.fixed_dictionaries({"x": st.floats(-1, 11), "n": st.sampled_from([1, 2, 3, 4]),
                                    "s": st.text(max_size=2), "f": st.booleans()}) if mixed
             else st.fixed_dictionaries({name: st.floats(allow_nan=False) for name in features}))
    instance = (valid | valid | st.dictionaries(st.sampled_from(names), field_values, max_size=5)
                | st.fixed_dictionaries({name: field_values for name in features}))
    instances = data.draw(st.lists(instance | field_values, min_size=1, max_size=4))
    body = {"instances": instances}
    fast, slow = outcome(Validator(features, 50), body), outcome(slow_validator(features), body)
    assert repr(fast) == repr(slow)  # repr: NaN == NaN, and int 1 differs from float 1.0


@pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")
@settings(max_examples=300, deadline=None)
@given(data=st.data(), mixed=st.booleans(), bare=st.booleans())
def test_fast_validation_of_value_rows_agrees_with_the_slow_path(data: st.DataObject, mixed: bool,
                                                                 bare: bool) -> None:
    features = MIXED if mixed else UNIFORM
    valid = (st.tuples(st.floats(-1, 11), st.sampled_from([1, 2, 3, 4]), st.text(max_size=2), st.booleans())
             if mixed else st.tuples(*(st.floats(allow_nan=False) for _ in features)))
    rows = (valid.map(list) | valid.map(list)
            | st.lists(row_values, min_size=len(features), max_size=len(features))
            | st.lists(row_values, max_size=5))
    instances = data.draw(st.lists(rows, min_size=1, max_size=4))
    body = instances if bare else {"instances": instances}
    fast, slow = outcome(Validator(features, 50), body), outcome(slow_validator(features), body)
    assert repr(fast) == repr(slow)
