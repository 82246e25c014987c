"""Atomic outputs: a command writes into a temporary sibling directory and renames it into place at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yields a fresh temporary directory that replaces `out` only if the block succeeds.

    On any exception the temporary directory is removed and `out` is left exactly as it was, so a failed or
    interrupted command never leaves a half-written artifact.
    """
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; an artifact directory should read like any other
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Writes a text file by rename, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (disk full, interrupt) leaves `path` and nothing else
        raise


def read_yaml(path: Path, what: str) -> Any:
    """The parsed YAML of a config file; a missing, unreadable or malformed file is a one-line UserError naming the
    file and what it was meant to be (`what`, e.g. "the gate config")."""
    import yaml

    from core.errors import UserError

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: cannot read {what}: {first}") from None


def parse_iso(value: str | None, where: str) -> datetime | None:
    """An ISO time (UTC when it names no zone), or None for None.

    Raises:
        UserError: not an ISO time; the message names `where` (an option or a field).
    """
    from core.errors import UserError

    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"{where}: not an ISO time: {value!r}") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
