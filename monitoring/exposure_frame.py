"""The exposure log (serving/exposure.py, JSONL, rotated exposure.jsonl -> .1 -> ... -> .N) as a DataFrame.

One row per served item: request_id, ts, user_id, surface, variant, version, endpoint, degraded, fallback, post_id,
position, score, source; propensity, inclusion and rank (an exploring variant's P(post in this slot), P(post in the
slate) and its place in the ranked order, serving/selectors/explore.py; columns only where some item has them); the
ranker's per-action predictions of the item (`pred_<action>` for each key of the item's `actions` mapping:
probabilities, `pred_dwell_time` in seconds; an item or record without one is missing, never 0) and the user's
feature values the models saw (one column per scalar feature; a list, like `missing_views`, becomes `n_<name>`);
on requests sampled for it (RecommenderConfig.log_candidate_features), the candidate inputs the ranker read of each
item (`cand_<feature>`, missing on the other rows).
Shadow records (kind "shadow") are not what users saw and are skipped. Lines that are not a JSON object with an
items list are counted in `ExposureRead.malformed` and skipped.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from core.errors import UserError

_ROTATED = re.compile(r"^(?P<base>.+\.jsonl)(?:\.(?P<n>\d+))?$")
_RECORD_KEYS = ("request_id", "ts", "user_id", "surface", "variant", "version", "endpoint", "degraded", "fallback")
_ITEM_KEYS = ("post_id", "position", "score", "source")
_EXPLORATION_KEYS = ("propensity", "inclusion", "rank")  # columns only where some item has them
# An action name becomes a column name: anything else in an item's "actions" is skipped, not turned into a column.
_ACTION_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
PREDICTION_PREFIX = "pred_"
CANDIDATE_PREFIX = "cand_"  # a served item's logged candidate input: cand_post_click_rate, cand_post_author_id, ...


@dataclass
class ExposureRead:
    frame: pd.DataFrame
    files: list[Path] = field(default_factory=list)
    records: int = 0
    malformed: int = 0
    skipped_shadow: int = 0


def exposure_files(path: Path) -> list[Path]:
    """The log files under `path` (a directory, or one file), oldest first: exposure.jsonl.N ... .1, exposure.jsonl."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"{path}: exposure log not found (expected a .jsonl file or a directory of them)")
    found: list[tuple[str, int, Path]] = []
    for p in path.iterdir():
        m = _ROTATED.match(p.name)
        if m and p.is_file():
            found.append((m["base"], int(m["n"] or 0), p))
    # Higher rotation number = older; within one base, oldest first.
    return [p for _, _, p in sorted(found, key=lambda t: (t[0], -t[1]))]


def _flatten(record: dict[str, Any]) -> list[dict[str, Any]]:
    base = {k: record.get(k) for k in _RECORD_KEYS}
    features = record.get("features") or {}
    if isinstance(features, dict):
        for name, value in features.items():
            if isinstance(value, list | tuple | dict):
                base[f"n_{name}"] = len(value)
            elif isinstance(value, bool):
                base[name] = int(value)
            else:
                base[name] = value
    rows = []
    for item in record["items"]:
        if not isinstance(item, dict):
            continue
        row = dict(base)
        row.update({k: item.get(k) for k in _ITEM_KEYS})
        row.update({k: _as_float(item[k]) for k in _EXPLORATION_KEYS if k in item})
        inputs = item.get("features")  # a sampled request's candidate inputs (log_candidate_features)
        if isinstance(inputs, dict):
            for name, value in inputs.items():
                if isinstance(name, str) and _ACTION_NAME.match(name) and not isinstance(value, list | dict):
                    row[CANDIDATE_PREFIX + name] = int(value) if isinstance(value, bool) else value
        actions = item.get("actions")
        if isinstance(actions, dict):
            for name, value in actions.items():
                if isinstance(name, str) and _ACTION_NAME.match(name):
                    number = _as_float(value)
                    row[PREDICTION_PREFIX + name] = number if number is not None and math.isfinite(number) else None
        rows.append(row)
    return rows


# Identifiers and labels that stay text. pandas.to_numeric segfaults (pandas 2.3.3) on some 32-hex-digit request ids,
# so numeric conversion goes through Python's float, value by value, and never touches these.
TEXT_COLUMNS = frozenset({"request_id", "variant", "version", "endpoint", "fallback", "source", "kind"})


def _as_float(value: object) -> float | None:
    """float(value), or None when it is not a number (a bool or a text that does not parse)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def read_exposure(path: Path, include_shadow: bool = False) -> ExposureRead:
    """Reads every (rotated) exposure file under `path` into one frame; malformed lines are counted and skipped."""
    files = exposure_files(path)
    out = ExposureRead(frame=pd.DataFrame(), files=files)
    rows: list[dict[str, Any]] = []
    for f in files:
        with open(f, "rb") as handle:
            for raw in handle:
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except (UnicodeDecodeError, ValueError):
                    # A last line without its newline is a record the server is still writing, not a malformed one.
                    out.malformed += raw.endswith(b"\n")
                    continue
                if not isinstance(record, dict) or not isinstance(record.get("items"), list):
                    out.malformed += 1
                    continue
                if record.get("kind", "exposure") != "exposure" and not include_shadow:
                    out.skipped_shadow += 1
                    continue
                out.records += 1
                rows.extend(_flatten(record))
    frame = pd.DataFrame(rows)
    for col in frame.columns:  # feature values come back as object when some records lack them
        if frame[col].dtype == object and col not in TEXT_COLUMNS:
            converted = frame[col].map(_as_float)
            if converted.notna().sum() == frame[col].notna().sum():
                frame[col] = converted.astype(float)
    out.frame = frame
    return out


def count_requests(path: Path, start_ts: float, end_ts: float | None = None) -> int:
    """The served records (kind exposure) with `start_ts <= ts < end_ts` under `path`, counted without building a
    frame: what decides whether a window is large enough to test at all."""
    n = 0
    for f in exposure_files(path):
        with open(f, "rb") as handle:
            for raw in handle:
                try:
                    record = json.loads(raw)
                except (UnicodeDecodeError, ValueError):
                    continue
                if not isinstance(record, dict) or record.get("kind", "exposure") != "exposure":
                    continue
                ts = _as_float(record.get("ts"))
                n += ts is not None and ts >= start_ts and (end_ts is None or ts < end_ts)
    return n


def save_window(path: Path, out: Path, start_ts: float, end_ts: float | None = None) -> int:
    """Copies the served records (kind exposure) with `start_ts <= ts < end_ts` from the log under `path` to
    `out/exposure.jsonl` (one file, written under a temporary name and renamed): a served window kept as the
    champion's baseline. Returns the records copied; with none, nothing is written."""
    lines: list[bytes] = []
    for f in exposure_files(path):
        with open(f, "rb") as handle:
            for raw in handle:
                try:
                    record = json.loads(raw)
                except (UnicodeDecodeError, ValueError):
                    continue
                if not isinstance(record, dict) or record.get("kind", "exposure") != "exposure":
                    continue
                ts = _as_float(record.get("ts"))
                if ts is not None and ts >= start_ts and (end_ts is None or ts < end_ts):
                    lines.append(raw if raw.endswith(b"\n") else raw + b"\n")
    if lines:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".exposure.jsonl.tmp-{os.getpid()}"
        tmp.write_bytes(b"".join(lines))
        os.replace(tmp, out / "exposure.jsonl")
    return len(lines)
