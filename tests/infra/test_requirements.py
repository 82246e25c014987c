"""requirements.lock, one lock in two parts: the runtime part is exactly what [project.dependencies] pulls in (the
Bento and the flows image install it alone, without resolving), the dev-only part what only the dev extra adds. No
image gets a test or lint tool (the Bento's list: tests/serving/test_bentofile.py)."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DEV_LINE = "# --- dev only"  # the line of requirements.lock where its dev-only part starts
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DECLARED: list[str] = PROJECT["dependencies"]
DEV_EXTRA: list[str] = PROJECT["optional-dependencies"]["dev"]
APART = {"torch"}  # pinned in pyproject.toml and installed apart, first, as the CPU wheel: never in the lock
# Named here too, not only through the dev extra: one of them moved into [project.dependencies] still fails.
TEST_TOOLS = {
    "pytest",
    "pytest-timeout",
    "hypothesis",
    "schemathesis",
    "selenium",
    "kubernetes-validate",
    "ruff",
    "mypy",
}


def name(requirement: str) -> str:
    return canonicalize_name(Requirement(requirement).name)


DEV_TOOLS = {name(r) for r in DEV_EXTRA} | TEST_TOOLS


def pins(text: str) -> dict[str, str]:
    """The pins of a requirements text (comments and blank lines skipped), by canonical name, in file order."""
    lines = (line.strip() for line in text.splitlines())
    return {name(line): line for line in lines if line and not line.startswith("#")}


def lock_parts() -> tuple[dict[str, str], dict[str, str]]:
    """(runtime part, dev-only part) of requirements.lock, split at its dev-only line."""
    text = (ROOT / "requirements.lock").read_text()
    runtime, marker, dev = text.partition("\n" + DEV_LINE)
    assert marker, f"requirements.lock has no line starting {DEV_LINE!r}"
    return pins(runtime), pins(dev.partition("\n")[2])  # the dev-only line's own text dropped


def pulled_in(requirements: Iterable[str], stop: set[str]) -> set[str]:
    """The names of `requirements` and of everything they need, by the metadata of the installed packages (which
    `make setup` installs from the lock): markers evaluated here (Python 3.11 on Linux, as in the images), requested
    extras followed, and a package named in `stop` never entered."""
    todo = [Requirement(r) for r in requirements]
    found: set[str] = set()
    visited: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key[0] in stop or key in visited:
            continue
        visited.add(key)
        found.add(key[0])
        try:
            needs = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            raise AssertionError(f"{req.name} is not installed: run `make setup`") from None
        for need in map(Requirement, needs):
            extras = req.extras or {""}
            if need.marker is None or any(need.marker.evaluate({"extra": e}) for e in extras):
                todo.append(need)
    return found


def test_the_lock_pins_what_is_installed() -> None:
    """The metadata the split is checked against is that of the pinned versions."""
    runtime, dev = lock_parts()
    wrong = {
        n: (pin, metadata.version(n)) for n, pin in (runtime | dev).items() if pin.split("==")[1] != metadata.version(n)
    }
    assert wrong == {}, "pinned vs installed: run `make setup`"


def test_the_runtime_part_is_exactly_what_the_declared_dependencies_pull_in() -> None:
    # A runtime package may name a dev tool: feast asks for SQLAlchemy[mypy], SQLAlchemy's plugin for the type
    # checker, which nothing imports at run time. The images install the runtime part without resolving, so mypy
    # stays out of them.
    needed = pulled_in(DECLARED, stop=DEV_TOOLS) - APART
    runtime, _ = lock_parts()
    assert sorted(needed - runtime.keys()) == [], "needed at run time: pin above the dev-only line of requirements.lock"
    assert sorted(runtime.keys() - needed) == [], "not needed at run time: move below the dev-only line"


def test_the_dev_only_part_is_what_only_the_dev_extra_adds() -> None:
    runtime, dev = lock_parts()
    only_dev = pulled_in(DECLARED + DEV_EXTRA, stop=set()) - runtime.keys() - APART
    assert sorted(only_dev - dev.keys()) == [], "what the dev extra adds: pin below the dev-only line"
    assert sorted(dev.keys() - only_dev) == [], (
        "not in the dev extra's tree: drop it or move it above the dev-only line"
    )


def test_every_declared_runtime_dependency_is_pinned_in_the_runtime_part_within_its_bounds() -> None:
    runtime, _ = lock_parts()
    for declared in map(Requirement, DECLARED):
        if declared.name in APART:
            assert str(declared.specifier) == "==2.13.0", declared  # the CPU wheel of the Makefile and both images
            continue
        pin = runtime.get(canonicalize_name(declared.name))
        assert pin is not None, f"{declared} is not pinned in the runtime part of requirements.lock"
        assert declared.specifier.contains(pin.split("==")[1], prereleases=True), f"{pin} breaks {declared}"


def test_no_test_or_dev_tool_is_in_the_runtime_part() -> None:
    runtime, dev = lock_parts()
    assert sorted(TEST_TOOLS - dev.keys()) == [], "test tools live in the dev-only part"
    assert sorted(runtime.keys() & DEV_TOOLS) == []


def _shell_commands(dockerfile: Path) -> list[list[str]]:
    """The commands of the RUN lines of `dockerfile`, continuation lines joined, split at `&&`, each as its argv."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    runs = [line.strip().removeprefix("RUN ") for line in text.splitlines() if line.strip().startswith("RUN ")]
    return [shlex.split(cmd) for run in runs for cmd in run.split("&&")]


def _installed_names(pip_install: list[str]) -> set[str]:
    """The packages a `pip install ...` argv names itself (files given with -r/-c/-e and option values skipped)."""
    names, args = set(), iter(pip_install[2:])
    for arg in args:
        if arg in {"-r", "-c", "-e", "--index-url", "--requirement", "--constraint", "--editable"}:
            next(args)
        elif not arg.startswith("-"):
            names.add(name(arg))
    return names


def test_the_flows_image_installs_the_runtime_part_only_as_it_is() -> None:
    runtime, dev = lock_parts()
    commands = _shell_commands(ROOT / "infra" / "flows.Dockerfile")
    cuts = [argv for argv in commands if argv[0] == "sed" and "requirements.lock" in argv]
    assert len(cuts) == 1, cuts
    # The image's own cut of the lock, run here: the runtime part, nothing of the dev-only one.
    sed, expr, lock, redirect, cut = cuts[0]
    assert (lock, redirect) == ("requirements.lock", ">"), cuts[0]
    got = subprocess.run([sed, expr, lock], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert list(pins(got).values()) == list(runtime.values())
    installs = [argv for argv in commands if argv[:2] == ["pip", "install"]]
    assert any(argv[i : i + 3] == ["--no-deps", "-r", cut] for argv in installs for i in range(len(argv))), installs
    assert not any("requirements.lock" in argv for argv in installs), "the whole lock holds the dev tools"
    named = set().union(*map(_installed_names, installs))
    assert sorted({"torch", "dvc", "prefect-kubernetes"} - named) == []
    assert sorted(named & (DEV_TOOLS | dev.keys())) == []
