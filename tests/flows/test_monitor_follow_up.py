"""The monitor flow's retrains: one on a failing check, then one on each of the next days' runs (the follow-ups),
whatever their verdict, until the ranker's training window holds only days from the alarm on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import flows.monitor as monitor
from flows.monitor import FOLLOW_UP_FILE, follow_up_days, follow_ups_left, monitor_flow


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str], list[str]]:
    """A project whose monitor verdicts are scripted (`verdicts`, one per run) and whose retrains are recorded."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"training_set_ranker": {"days": 2}}))
    verdicts: list[str] = []
    retrains: list[str] = []

    def window(*args: Any) -> dict[str, Any]:
        status = verdicts.pop(0)
        return {"status": status, "tests": {"target_drift": status}, "alarms": ["target_drift"]}

    def retrain(project: str, reason: str) -> dict[str, Any]:
        retrains.append(reason)
        return {"reason": reason}

    monkeypatch.setattr(monitor, "champion_baseline", lambda *args: (None, "no baseline"))
    monkeypatch.setattr(monitor, "monitor_window", window)
    monkeypatch.setattr(monitor, "publish_monitor", lambda *args: None)
    monkeypatch.setattr(monitor, "retrain_flow", retrain)
    return tmp_path, verdicts, retrains


def run(project: Path, **kwargs: Any) -> dict[str, Any]:
    result: dict[str, Any] = monitor_flow.fn(project=str(project), dashboards=False, **kwargs)
    return result


def test_an_alarm_retrains_then_the_next_window_days_retrain_too(project: tuple[Path, list[str], list[str]]) -> None:
    root, verdicts, retrains = project
    assert follow_up_days(root) == 2 and follow_ups_left(root) == 0
    verdicts += ["pass", "fail", "insufficient_data", "pass", "pass"]
    days = [run(root)["retrained"] is not None for _ in range(5)]
    assert days == [False, True, True, True, False]  # the alarm's day and the two days after it
    assert retrains[0] == "monitor: target_drift"
    assert retrains[1:] == ["follow-up of an alarm (2 left)", "follow-up of an alarm (1 left)"]
    assert follow_ups_left(root) == 0 and (root / FOLLOW_UP_FILE).is_file()


def test_a_new_alarm_starts_the_follow_ups_again_and_without_retrains_none_are_due(
    project: tuple[Path, list[str], list[str]],
) -> None:
    root, verdicts, retrains = project
    verdicts += ["fail", "pass", "fail", "pass", "pass", "pass"]
    days = [run(root, follow_up=2)["retrained"] is not None for _ in range(6)]
    assert days == [True, True, True, True, True, False]
    assert [r.startswith("monitor:") for r in retrains] == [True, False, True, False, False]
    verdicts += ["fail", "pass"]
    assert [run(root, retrain_on_fail=False)["retrained"] for _ in range(2)] == [None, None]
    assert follow_ups_left(root) == 0
