"""Exposure log: what each request was shown (and what the shadow variant would have shown), as append-only JSONL.

The request thread only puts the record on a bounded queue; one background thread serializes and writes it, and
rotates the file by size (exposure.jsonl -> exposure.jsonl.1 -> ... -> exposure.jsonl.<max_files - 1>, the oldest
deleted). A full queue or a failed write drops the record and counts it: logging never slows or fails a response.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from core.config import FilePath, StrictConfig

log = logging.getLogger(__name__)

_STOP = object()


class ExposureSettings(StrictConfig):
    """Where and how much to log (read once when the service starts)."""

    path: FilePath = Path("logs/exposure.jsonl")
    # 64 MiB x 8 files bounds the disk the log can take to half a GiB.
    max_bytes: Annotated[int, Field(ge=1)] = 64 * 1024 * 1024
    max_files: Annotated[int, Field(ge=1)] = 8
    # A few seconds of traffic at a few thousand requests/s: deeper only hides a disk that cannot keep up.
    queue_size: Annotated[int, Field(ge=1)] = 10_000


class ExposureLog:
    """Append-only JSONL, written off the response path.

    Args:
        settings: file, rotation and queue size.
        on_drop: called once per dropped record (e.g. a Prometheus counter's inc).
    """

    def __init__(self, settings: ExposureSettings, on_drop: Callable[[], None] | None = None) -> None:
        self.path = Path(settings.path)
        self.max_bytes = settings.max_bytes
        self.max_files = settings.max_files
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=settings.queue_size)
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._dropped = 0
        self._written = 0
        self._file: Any = None
        self._thread = threading.Thread(target=self._run, name="exposure-log", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def written(self) -> int:
        return self._written

    def log(self, record: dict[str, Any]) -> bool:
        """Queues a record; False (and counted as dropped) when the queue is full."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._drop()
            return False
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        """Waits until every queued record is written or dropped (tests, shutdown); False on timeout."""
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Writes what is queued, then stops the writer thread."""
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("exposure log: queue still full at close; %d records not written", self._queue.qsize())
            return
        self._thread.join(timeout)

    def _drop(self) -> None:
        with self._lock:
            self._dropped += 1
        if self._on_drop is not None:
            self._on_drop()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._close_file()
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                self._write(json.dumps(item, separators=(",", ":"), default=str) + "\n")
            except (OSError, TypeError, ValueError) as err:
                self._drop()
                log.warning("exposure log: record dropped: %s", err)
                self._close_file()  # reopen next time: the directory may come back

    def _write(self, line: str) -> None:
        data = line.encode("utf-8")
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._open()
        if self._file.tell() > 0 and self._file.tell() + len(data) > self.max_bytes:
            self._rotate()
        start = self._file.tell()
        n = self._file.write(data)
        if n != len(data):
            # A disk that fills up mid-record takes part of it and reports success: cut the half line off (it would
            # also break the line after it) and count the record as dropped.
            with contextlib.suppress(OSError):
                self._file.truncate(start)
            raise OSError(errno.ENOSPC, f"{self.path}: short write, {n} of {len(data)} bytes (disk full?)")
        self._written += 1

    def _rotate(self) -> None:
        """exposure.jsonl.N-1 -> .N ... exposure.jsonl -> .1; the file past max_files is deleted."""
        self._close_file()
        oldest = self.path.with_name(f"{self.path.name}.{self.max_files - 1}")
        if self.max_files == 1 or oldest.exists():
            (self.path if self.max_files == 1 else oldest).unlink(missing_ok=True)
        for n in range(self.max_files - 2, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.rename(self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.max_files > 1 and self.path.exists():
            self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        self._file = self._open()

    def _open(self) -> Any:
        # Unbuffered: each record is one write(2), so a failed write loses exactly the record it counts.
        return open(self.path, "ab", buffering=0)  # kept open across records

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
