"""The CLI called in-process (as the tests call it) must end with SystemExit, never a hard exit of the caller, even
after Feast's DuckDB offline store (ibis) was imported: a hard exit would end a pytest session early with status 0
(.ci/run also checks that the session finished)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from tests.flows.test_promotion import fake_project


def test_cli_in_process_returns_after_ibis_was_imported(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    importlib.import_module("ibis")
    root = fake_project(tmp_path / "project")
    res = run_cli("lineage", "--root", str(root), "--json")  # a command that completes normally
    assert res.code == 0 and json.loads(res.stdout) == {"champion": None, "history": []}
