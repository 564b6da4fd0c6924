"""Helpers of the contract tests (test_contract.py, test_contract_files.py): a minimal valid mlship.yaml and the
ContractError a text raises."""

from __future__ import annotations

import pytest

from mlship.contract_io import parse_contract
from mlship.errors import ContractError

MINIMAL = """\
name: iris
runtime: sklearn
artifact: model.joblib
task: classification
input:
  features:
    a: float
    b: {type: int, minimum: 0}
"""


def error_of(text: str) -> ContractError:
    with pytest.raises(ContractError) as info:
        parse_contract(text)
    assert info.value.exit_code == 2
    return info.value
