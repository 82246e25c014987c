"""BENCHMARKS.md's headline: the numbers that matter, each found in the committed results."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from bench.harness import RESULTS
from bench.run import HEADLINE, headline


def _bodies() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]


def test_every_headline_row_is_measured_and_carries_a_target_and_verdict() -> None:
    lines = headline(_bodies())
    table = lines[lines.index("## Headline") + 4 : lines.index("## Every row with a target") - 1]
    assert len(table) == len(HEADLINE)
    for (label, group, name), line in zip(HEADLINE, table, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == f"{label} ({group}: {name})"
        assert cells[2] and cells[3], f"{name}: the headline row has no target or no verdict"


def test_a_headline_row_missing_from_the_results_is_an_error() -> None:
    bodies = [b for b in _bodies() if b["group"] != "pipeline"]
    with pytest.raises(KeyError, match="bench/results/pipeline.json"):
        headline(bodies)


def _commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True, capture_output=True)
    subprocess.run([*git, "commit", "-q", "-m", message], cwd=repo, check=True, capture_output=True)
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def test_the_header_says_whether_the_rows_share_their_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.run as run

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    monkeypatch.setattr(run, "REPO", tmp_path)
    first = _commit(tmp_path, {"a.py": "x = 1  # one\n", "README.md": "old\n"}, "first")
    time.sleep(1.1)  # commit times order the commits
    notes = _commit(tmp_path, {"a.py": "x = 1  # one\n# a new comment\n\n", "README.md": "new\n"}, "notes")
    time.sleep(1.1)
    code = _commit(tmp_path, {"a.py": "x = 2\n"}, "code")
    assert run.code_changes(first, notes) == []
    assert run.code_changes(first, code) == ["-x = 1  # one", "+x = 2"]
    assert run.same_code([first]).startswith("Every row was measured at one commit")
    assert run.same_code([notes, first]).startswith("Every row was measured on the same code: the 2 commits")
    assert "whose code differs (2 changed code lines" in run.same_code([first, notes, code])
    assert "not all of them are in this clone" in run.same_code([first, "0123abc"])


def test_run_once_outlasts_a_command_that_writes_more_than_a_pipe_holds_and_reports_a_failure() -> None:
    """A chatty command (Prefect logs each flow run to stderr) must not block on a full pipe: 1 MiB of stderr."""
    import sys

    from bench.harness import run_once

    chatty = "import sys; sys.stderr.write('x' * (1 << 20)); sys.stderr.flush()"
    wall, rss = run_once([sys.executable, "-c", chatty])
    assert wall > 0 and rss > 0
    with pytest.raises(RuntimeError, match="exited 3: .*boom"):
        run_once([sys.executable, "-c", "import sys; sys.stderr.write('y' * 100000 + 'boom'); sys.exit(3)"])
