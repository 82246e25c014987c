"""The Phoenix anchor of bench.ranker: xAI's x-algorithm ranker (JAX), timed on this machine in the same bench run as
Ember, never a figure from another machine (../shared/anchors/phoenix/README.md says why: AVX2 and AVX-512 machines
differ 2-4x).

`measure()` sets up what it needs when it is missing, with nothing to run by hand first:

- a venv of its own (jax 0.8.1, jaxlib 0.8.1, dm-haiku, numpy: ~600 MB) in bench/.anchors/phoenix-venv
  (git-ignored; EMBER_ANCHORS moves the folder), out of the project's venv and lock;
- the Phoenix code: phoenix/ of xai-org/x-algorithm at its first public release, commit aaa167b3. EMBER_PHOENIX_SRC
  names such a phoenix/ folder; else EMBER_PHOENIX_GIT names a clone of x-algorithm (or of a fork that mirrors it),
  from which `git archive aaa167b3 phoenix` is extracted into bench/.anchors/x-algorithm-aaa167b3; else that
  folder is used if an earlier run left it.

Where a piece cannot be had (no registry, no source), `measure()` returns the reason instead of timings, and the
benchmark records the anchor as "not runnable here: <reason>".
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RELEASE = "aaa167b3"  # xai-org/x-algorithm's first public release (../shared/anchors/phoenix/README.md)
PACKAGES = ("jax==0.8.1", "jaxlib==0.8.1", "dm-haiku==0.0.17", "numpy")
SOURCE_FILES = ("grok.py", "recsys_model.py")  # what bench/phoenix_jax.py imports
SCRIPT = Path(__file__).with_name("phoenix_jax.py")


def anchors_dir() -> Path:
    return Path(os.environ.get("EMBER_ANCHORS") or REPO / "bench" / ".anchors")


def _tail(text: str | bytes, n: int = 300) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[-n:]


def ensure_venv() -> Path | str:
    """The anchor venv's python, installed when missing or broken; else why it cannot be."""
    venv = anchors_dir() / "phoenix-venv"
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import jax, jaxlib, haiku, numpy"]
    if python.is_file() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    try:
        if not python.is_file():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *PACKAGES], check=True, capture_output=True, timeout=1200
        )
    except subprocess.CalledProcessError as err:
        return f"could not install {' '.join(PACKAGES)} into {venv}: {_tail(err.stderr or err.stdout or '')}"
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"could not set up {venv}: {err}"
    if subprocess.run(check, capture_output=True).returncode != 0:
        return f"{venv}: jax/haiku installed but not importable"
    return python


def _has_source(folder: Path) -> bool:
    return all((folder / name).is_file() for name in SOURCE_FILES)


def find_source() -> Path | str:
    """The release's phoenix/ folder; else why there is none."""
    if named := os.environ.get("EMBER_PHOENIX_SRC"):
        folder = Path(named)
        return folder if _has_source(folder) else f"EMBER_PHOENIX_SRC={named} lacks {', '.join(SOURCE_FILES)}"
    extracted = anchors_dir() / f"x-algorithm-{RELEASE}"
    if clone := os.environ.get("EMBER_PHOENIX_GIT"):
        archive = subprocess.run(
            ["git", "--git-dir", _git_dir(Path(clone)), "archive", RELEASE, "phoenix"], capture_output=True
        )
        if archive.returncode != 0:
            return f"EMBER_PHOENIX_GIT={clone}: git archive {RELEASE} phoenix failed: {_tail(archive.stderr)}"
        extracted.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile() as tar:
            tar.write(archive.stdout)
            tar.seek(0)
            with tarfile.open(fileobj=tar) as t:
                t.extractall(extracted, filter="data")
    if _has_source(extracted / "phoenix"):
        return extracted / "phoenix"
    return (
        f"the Phoenix code (xai-org/x-algorithm {RELEASE}, phoenix/) is not on this machine: set EMBER_PHOENIX_SRC "
        "to its phoenix/ folder or EMBER_PHOENIX_GIT to a clone"
    )


def _git_dir(clone: Path) -> str:
    return str(clone / ".git") if (clone / ".git").exists() else str(clone)


def source_digest(folder: Path) -> dict[str, str]:
    """sha256 (first 12 hex) of each source file the anchor ran, so a row says which Phoenix code it timed."""
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()[:12] for name in SOURCE_FILES}


def measure(candidates: tuple[int, ...], cores: int, runs: int, warmup: int, timeout_s: float = 900) -> dict[str, Any]:
    """Runs bench/phoenix_jax.py pinned to the first `cores` CPUs this process may use (XLA sizes its thread pool by
    the affinity, so its cores and torch's thread count mean the same); returns its JSON plus the source it ran, or
    {"error": reason}."""
    python = ensure_venv()
    if isinstance(python, str):
        return {"error": python}
    source = find_source()
    if isinstance(source, str):
        return {"error": source}
    allowed = sorted(os.sched_getaffinity(0))
    if cores > len(allowed):
        return {"error": f"{cores} cores asked, {len(allowed)} available"}
    env = dict(os.environ, PHX=str(source), JAX_PLATFORMS="cpu")
    argv = [str(python), str(SCRIPT), "--candidates", ",".join(map(str, candidates)), "--runs", str(runs)]
    argv += ["--warmup", str(warmup), "--cpus", ",".join(map(str, allowed[:cores]))]
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"{SCRIPT.name} ran past {timeout_s:.0f} s"}
    if proc.returncode != 0:
        return {"error": f"{SCRIPT.name} exited {proc.returncode}: {_tail(proc.stderr)}"}
    body: dict[str, Any] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    body["source"] = str(source)
    body["source_sha256_12"] = source_digest(source)
    return body
