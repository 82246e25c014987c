"""flows.isolated: a layer function in a process of its own, its value or its one-line error back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flows.isolated import IsolatedError, run_isolated


def test_the_value_comes_back_from_a_process_working_in_the_project(tmp_path: Path) -> None:
    assert run_isolated(tmp_path, os.getcwd) == str(tmp_path)
    assert run_isolated(tmp_path, os.getpid) != os.getpid()
    assert run_isolated(tmp_path, json.loads, '{"a": [1, 2]}') == {"a": [1, 2]}


def test_an_exception_comes_back_as_one_line_naming_the_function(tmp_path: Path) -> None:
    with pytest.raises(IsolatedError, match=r"^json\.loads failed: JSONDecodeError: Expecting value") as err:
        run_isolated(tmp_path, json.loads, "not json")
    assert "\n" not in str(err.value)


def test_a_process_that_dies_without_an_answer_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(IsolatedError, match="exited with code 3 and no answer"):
        run_isolated(tmp_path, os._exit, 3)
