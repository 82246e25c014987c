"""`make bench`: runs every benchmark group, then rewrites BENCHMARKS.md from bench/results/*.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.harness import RESULTS

REPO = Path(__file__).resolve().parents[1]
# Each module's main() measures and saves bench/results/<group>.json.
GROUPS = [
    "bench.data",
    "bench.features",
    "bench.models",
    "bench.ranker",
    "bench.threads",
    "bench.quality",
    "bench.serving",
    "bench.events",
    "bench.drift_detection",
    "bench.ab",
    "bench.off_policy",
    "bench.simulate",
    "bench.pipeline",
]


def measured(body: dict[str, Any], row: dict[str, Any]) -> tuple[str, str, str]:
    """(time, commit, CPU with its SIMD flags) a row was measured at: the group's, unless the row was kept from an
    earlier run of a group that re-measured only some sections (bench.models --only), which records its own."""
    m, extra = body["machine"], row.get("extra", {})
    cpu = f"{m['cpu']} ({m.get('cpu_flags', 'unknown')})"
    return extra.get("measured_at", body["measured_at"]), extra.get("commit", m["commit"]), extra.get("cpu", cpu)


# The numbers that matter, in the order a user meets them: (what it answers, group, row name). Each is a row of its
# group's results with a target; `headline` fails loudly when one is missing, so a renamed row cannot drop out.
HEADLINE: tuple[tuple[str, str, str], ...] = (
    ("main job, fresh clone", "pipeline", "make run from a fresh clone (after set-up)"),
    ("main job, no-op rerun", "pipeline", "make run again, inputs unchanged (no-op)"),
    ("served latency, keep-alive", "serving", "POST /recommend over HTTP, concurrency 1"),
    ("served latency, new connection", "serving", "POST /recommend over HTTP, concurrency 1, a new connection each"),
    ("ranker vs Phoenix, C=64", "ranker", "ranker forward, 1 user, S=127, C=64, 2 threads"),
    ("ranker on KuaiRand vs peers", "quality", "ranker-kuairand: ranker_independent"),
    ("ranker vs synthetic oracle", "quality", "ranker-synthetic: ranker_independent"),
    ("retrieval vs synthetic oracle", "quality", "retrieval-synthetic: two_tower"),
    ("retrieval on ML-100K vs SASRec", "quality", "retrieval-movielens: two_tower"),
    ("served ANN index", "models", "served index (IVF1264,Flat, nprobe 32): the index"),
    ("event -> next request", "events", "engagement -> the next /recommend's history (redis)"),
    ("drift recovery in the loop", "simulate", "topic_shift: recovery of the true reward"),
    ("false alarms, no drift", "simulate", "no drift: days with an alarm"),
    ("A/A false positives", "ab", "A/A: random vs random"),
)


def _row_line(label: str, body: dict[str, Any], r: dict[str, Any]) -> str:
    result = r["throughput"] or f"{r['wall_s_median']} s median"
    when, commit, cpu = measured(body, r)
    return f"| {label} | {result} | {r['target']} | {r['verdict']} | {cpu} | {when[:10]} | `{commit}` |"


def headline(bodies: list[dict[str, Any]]) -> list[str]:
    """Two tables: the `HEADLINE` rows, then every row that carries a target: the number, the target, the verdict,
    and where and when it was measured (a figure from one machine is only ever set against a target or an anchor
    measured on that machine).

    Raises:
        KeyError: a `HEADLINE` row is not in the results (renamed or never measured).
    """
    head = ["| benchmark | result | target | verdict | machine (SIMD flags) | measured | commit |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    by_name = {(b["group"], r["name"]): (b, r) for b in bodies for r in b["rows"]}
    lines = ["## Headline", "", *head]
    for label, group, name in HEADLINE:
        if (group, name) not in by_name:
            raise KeyError(f"bench.run.HEADLINE: no row {name!r} in bench/results/{group}.json")
        body, r = by_name[(group, name)]
        lines.append(_row_line(f"{label} ({group}: {name})", body, r))
    lines += ["", "## Every row with a target", "", *head]
    for body in bodies:
        for r in body["rows"]:
            if r.get("target"):
                lines.append(_row_line(f"{body['group']}: {r['name']}", body, r))
    return [*lines, ""]


def code_changes(old: str, new: str) -> list[str]:
    """The changed lines between two commits that are code: every added or removed line of a file that is not
    Markdown or a benchmark result, unless it is blank or a comment (`#`). [] = the same code. Raises
    CalledProcessError when a commit is unknown to this clone."""
    diff = subprocess.run(
        ["git", "diff", "--unified=0", old, new, "--", ".", ":(exclude)*.md", ":(exclude)bench/results"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    out = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---")) or not line.startswith(("+", "-")):
            continue
        text = line[1:].strip()
        if text and not text.startswith("#"):
            out.append(line)
    return out


def same_code(commits: list[str]) -> str:
    """One sentence on the commits the rows were measured at: whether any of them holds other code than the first
    (comments, Markdown and results aside), checked with git when this file is written."""
    if len(commits) == 1:
        return f"Every row was measured at one commit, `{commits[0]}`."
    names = ", ".join(f"`{c}`" for c in commits)
    try:
        ordered = sorted(commits, key=_commit_time)
        changed = [line for c in ordered[1:] for line in code_changes(ordered[0], c)]
    except (subprocess.CalledProcessError, ValueError):
        return f"Rows were measured at {len(commits)} commits ({names}); not all of them are in this clone."
    if changed:
        return (f"Rows were measured at {len(commits)} commits ({names}) whose code differs ({len(changed)} changed "
                "code lines against the first): compare rows of one commit only.")  # fmt: skip
    return (f"Every row was measured on the same code: the {len(commits)} commits ({names}) differ only in comments, "
            "Markdown and benchmark results (`git diff` checked when this file was written).")  # fmt: skip


def _commit_time(commit: str) -> int:
    out = subprocess.run(["git", "show", "-s", "--format=%ct", commit], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise ValueError(commit)
    return int(out.stdout.strip())


def render() -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench.run`) from `bench/results/*.json`; every row names the command that",
        "reproduces it. Each run is a fresh process; wall time is the median and p99 over the repeats, peak memory the",
        "largest resident set of any repeat. These machines are shared and noisy: compare medians, not single runs.",
        "An anchor (another system's figure) is measured side by side in the same run on the same machine, or cited",
        "with its source, statistic and machine; where it cannot run, its row says why.",
        "",
    ]
    bodies = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))]
    lines += [same_code(sorted({measured(b, r)[1] for b in bodies for r in b["rows"]})), ""]
    lines += headline(bodies)
    for body in bodies:
        m = body["machine"]
        lines += [
            f"## {body['group']}",
            "",
            f"Measured {body['measured_at']} on {m['cpu']}"
            + (f" ({m['cpu_flags']})" if m.get("cpu_flags") else "")
            + f", {m['cores']} cores, {m['memory_gb']} GB RAM, "
            f"Python {m['python']}, commit `{m['commit']}`.",
            "",
            "| benchmark | settings | command | repeats | median s | p99 s | peak RSS MB | throughput | target "
            "| vs target |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in body["rows"]:
            when, commit, cpu = measured(body, r)
            settings = r["settings"]
            if (when, commit) != (body["measured_at"], m["commit"]):
                settings += f" (measured {when} at `{commit}` on {cpu}, kept from that run)"
            lines.append(
                f"| {r['name']} | {settings} | `{r['command']}` | {r['repeats']} | {r['wall_s_median']} | "
                f"{r['wall_s_p99']} | {r['peak_rss_mb_max'] or 'n/a (in-process)'} | {r['throughput']} | "
                f"{r['target']} | {r['verdict']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    """`python -m bench.run [group ...]`: measure the named groups (all by default), then rewrite BENCHMARKS.md."""
    only = sys.argv[1:]
    for module in GROUPS:
        if only and module.split(".")[-1] not in only:
            continue
        subprocess.run([sys.executable, "-m", module], cwd=REPO, check=True)
    (REPO / "BENCHMARKS.md").write_text(render())
    print(REPO / "BENCHMARKS.md")


if __name__ == "__main__":
    main()
