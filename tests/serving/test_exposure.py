"""The exposure log: JSONL lines, size rotation with a file cap, drops counted on a full queue or a failed write."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from serving.exposure import ExposureLog, ExposureSettings


def _record(i: int) -> dict[str, object]:
    return {"request_id": f"r{i}", "user_id": i, "items": [{"post_id": 1, "position": 0, "score": 0.5}]}


def test_records_are_json_lines_in_order(tmp_path: Path) -> None:
    log = ExposureLog(ExposureSettings(path=tmp_path / "exposure.jsonl"))
    for i in range(5):
        assert log.log(_record(i))
    assert log.flush()
    lines = (tmp_path / "exposure.jsonl").read_text().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [f"r{i}" for i in range(5)]
    log.close()


def test_rotation_keeps_at_most_max_files(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "exposure.jsonl"
    log = ExposureLog(ExposureSettings(path=path, max_bytes=300, max_files=3))
    for i in range(100):
        log.log(_record(i))
    assert log.flush()
    log.close()
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["exposure.jsonl", "exposure.jsonl.1", "exposure.jsonl.2"]
    for p in path.parent.iterdir():
        assert p.stat().st_size <= 300
    # The newest records are in the live file, the older ones in .1 then .2; the oldest ones are gone.
    newest = [json.loads(line)["user_id"] for line in path.read_text().splitlines()]
    older = [json.loads(line)["user_id"] for line in (path.parent / "exposure.jsonl.1").read_text().splitlines()]
    assert newest[-1] == 99 and max(older) < min(newest)
    assert log.written == 100 and log.dropped == 0


def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    drops: list[int] = []
    log = ExposureLog(ExposureSettings(path=tmp_path / "e.jsonl", queue_size=2), on_drop=lambda: drops.append(1))
    gate = threading.Event()
    log._queue.put(gate)  # the writer thread takes it, sets it and waits on an empty queue
    gate.wait(2)
    # Hold the writer inside its next write, so the queue behind it fills up.
    blocker = threading.Lock()
    blocker.acquire()
    original = log._write

    def slow_write(line: str) -> None:
        with blocker:
            original(line)

    log._write = slow_write  # type: ignore[method-assign]
    accepted = [log.log(_record(i)) for i in range(10)]
    assert accepted.count(False) >= 7  # one in the writer's hands, two queued, the rest dropped
    assert log.dropped == accepted.count(False) == len(drops)
    blocker.release()
    assert log.flush()
    log.close()


def test_failed_write_drops_and_counts_and_the_log_carries_on(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the log directory should be")
    log = ExposureLog(ExposureSettings(path=blocked / "exposure.jsonl"))
    assert log.log(_record(1))  # queued: the failure happens on the writer thread
    assert log.flush()
    assert log.dropped == 1 and log.written == 0
    blocked.unlink()  # the disk comes back: the next record is written
    log.log(_record(2))
    assert log.flush()
    assert log.written == 1
    log.close()


def test_a_record_cut_short_by_a_full_disk_is_removed_and_counted(tmp_path: Path) -> None:
    """A filling disk takes what fits of a write and reports that much (a short write), not an error."""
    path = tmp_path / "exposure.jsonl"
    room = [len(json.dumps(_record(1), separators=(",", ":"))) + 1 + 40]  # one line, then 40 bytes of the next

    class FillingFile:
        def __init__(self) -> None:
            self.file = open(path, "ab", buffering=0)  # noqa: SIM115 (closed by the log)

        def write(self, data: bytes) -> int:
            n = self.file.write(data[: room[0]])
            room[0] -= n
            return n

        def __getattr__(self, name: str) -> object:
            return getattr(self.file, name)

    log = ExposureLog(ExposureSettings(path=path))
    log._open = FillingFile  # type: ignore[method-assign]
    for i in range(1, 4):
        log.log(_record(i))
    assert log.flush()
    log.close()
    assert [json.loads(line)["user_id"] for line in path.read_text().splitlines()] == [1]  # no half line
    assert log.written == 1 and log.dropped == 2
