"""The challenger and the champion on the same windows: the numbers the promotion gate compares.

Both rankers are scored on one validation window of the ranker training set (`models.ranker.job.compare_rankers`),
and with `data` both two-towers on one temporal test window of that dataset (`models.retrieval.job
.compare_retrievers`), so a challenger trained on new data is not judged against numbers its champion got
elsewhere. `ember evaluate compare` and the pipeline flow's evaluate task both call `compare_models`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.io import atomic_write_text


def _check_saved(option: str, path: Path, what: str) -> None:
    if not (path / "config.json").is_file():
        raise UserError(f"{option}: {path} is not a saved {what} (no config.json)")


def compare_models(
    challenger: Path,
    champion: Path,
    training_set: Path,
    out: Path,
    features: Path | None = None,
    valid_fraction: float = 0.2,
    data: Path | None = None,
    challenger_retrieval: Path | None = None,
    champion_retrieval: Path | None = None,
) -> dict[str, Any]:
    """Scores both rankers (and with `data` both two-towers) on the same windows and writes the result to `out`
    (JSON, atomically).

    Returns:
        {"challenger": {...}, "champion": {...}, "window": {...}, "retrieval": {...} (with `data`)}.

    Raises:
        UserError: a directory that is not a saved model, or `data` without both two-towers (or the reverse).
    """
    from models.ranker.job import compare_rankers

    _check_saved("--challenger", challenger, "ranker")
    _check_saved("--champion", champion, "ranker")
    towers = {"--data": data, "--challenger-retrieval": challenger_retrieval,
              "--champion-retrieval": champion_retrieval}  # fmt: skip
    given = [option for option, value in towers.items() if value is not None]
    if given and len(given) < len(towers):
        missing = next(option for option, value in towers.items() if value is None)
        raise UserError(f"{missing}: needed with {', '.join(given)} (the two-towers are compared on --data)")
    for option in ("--challenger-retrieval", "--champion-retrieval"):
        tower = towers[option]
        if tower is not None:
            _check_saved(option, tower, "two-tower model")
    result = compare_rankers({"challenger": challenger, "champion": champion}, training_set, valid_fraction, features)
    if data is not None and challenger_retrieval is not None and champion_retrieval is not None:
        from models.retrieval.job import compare_retrievers

        result["retrieval"] = compare_retrievers(data, {"challenger": challenger_retrieval,
                                                        "champion": champion_retrieval})  # fmt: skip
    atomic_write_text(out, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    """One line per model: its ranker's window metrics and, when compared, its two-tower's Recall@200."""
    lines = []
    for name in ("challenger", "champion"):
        m = result[name]
        line = f"{name}: auc_mean {m['auc_mean']:.4f}, gauc_mean {m['gauc_mean']:.4f}, ndcg@10 {m['ndcg@10']:.4f}"
        if "retrieval" in result:
            line += f"; retrieval recall@200 {result['retrieval'][name].get('recall@200', float('nan')):.4f}"
        lines.append(line)
    return lines
