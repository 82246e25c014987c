"""Fixtures shared across test packages."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str

    def error_line(self) -> str:
        """Asserts that bad input was reported the CLI way (exit status 2, one line on stderr) and returns it."""
        assert self.code == 2, self.stderr
        assert "Traceback" not in self.stderr
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, self.stderr
        return lines[0]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Runs `ember <args>` in-process through `cli.main.main`, so its one-line UserError handler is exercised."""
    from cli.main import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()  # drop anything printed before
        with pytest.raises(SystemExit) as done:
            main(list(args))
        out, err = capsys.readouterr()
        code = done.value.code
        return CliResult(code if isinstance(code, int) else 0, out, err)

    return run


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Leaves the exit status where .ci/run looks for it: proof the whole session ran (see .ci/run)."""
    marker = os.environ.get("EMBER_PYTEST_MARKER")
    if marker:
        with open(marker, "w") as f:
            f.write(str(int(exitstatus)))


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: a second intra-op thread only adds wake-up latency (badly so on a busy 2-core machine).
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
