"""Layer functions run in a process of their own, for the flows.

Feast's DuckDB offline store leaves native objects that only a process exit cleans up, and torch and Evidently hold
threads and memory the flow's process should not keep: the Prefect flow must stay small and shut its API down
cleanly. So a task calls the same function the DVC stage's command calls (never the command line itself), in a
fresh interpreter started by `multiprocessing`'s spawn method, with the project as its working directory, and gets
the function's return value back (anything picklable). An exception in the child comes back as one line.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class IsolatedError(RuntimeError):
    """The function raised in its process; the message is the exception's type and text."""


def _child(conn: Connection, cwd: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    try:
        os.chdir(cwd)
        conn.send(("ok", fn(*args, **kwargs)))
    except BaseException as err:  # SystemExit included: every failure goes back to the parent as one line
        line = f"{type(err).__name__}: {err}".splitlines()[0] if str(err) else type(err).__name__
        conn.send(("error", line, traceback.format_exc()))
    finally:
        conn.close()


def run_isolated(project: Path, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` in a fresh process whose working directory is `project`; returns its value.

    Raises:
        IsolatedError: `fn` raised (its type and first line), or the process died without an answer (its exit code).
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, str(project), fn, args, kwargs), name=getattr(fn, "__name__", "fn"))
    proc.start()
    child.close()
    try:
        answer = parent.recv()  # before join: a large result would fill the pipe and block the child's exit
    except EOFError:
        answer = None
    finally:
        proc.join()
        parent.close()
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
    if answer is None:
        raise IsolatedError(f"{name}: its process exited with code {proc.exitcode} and no answer")
    if answer[0] == "error":
        raise IsolatedError(f"{name} failed: {answer[1]}")
    return answer[1]
