"""What was served, with the outcomes it received, as canonical impressions: the exposure log back into training.

`served_dataset` reads the exposure log (serving/exposure.py: every rotated file, oldest first; shadow records are
not what users saw and are skipped) strictly, joins each served item's outcome and writes a canonical dataset
(core/schema.py) holding only `impressions` (users, posts and follows are the base dataset's: `ember data merge`
puts the two together, features/merge.py, and the training set reads the merged dataset).

impressions: one per served item.
  request_id, impression_id  SERVED_ID_BASE + 60 bits of sha256 of the logged request id (and of request id and
                    position): far above any id a generator or importer gives, so a merge cannot collide.
  user_id, surface, position, post_id  as logged; author_id from the base dataset's posts.
  ts                the time the service took as "now": the record's `as_of` (epoch seconds, logged when it served
                    a fixed-time world: variants.yaml `as_of`, a simulation's clock), else the record's ts (epoch
                    seconds); `--as-of` overrides both (a log written before records carried their `as_of`).
  in_network        the base dataset's follows hold (user, author) from before ts.
  actions           the outcomes: a file (monitoring.outcomes.read_outcomes: request_id, post_id, 0/1 per action;
                    only its action columns are observed) or the synthetic truth (simulate_outcomes, every action,
                    dwell_time and p_<action>). A served item without an outcome row is refused unless
                    `missing_is_no_action` (the monitor's reading: no row, no action).
  extras            x_served_request (the logged request id), x_variant, x_propensity (NaN where not exploring).

Bad input is one UserError naming the file, line and field (a line that is not a JSON object, a bad field, a
duplicated request), the served item (no outcome, an unknown post or user); nothing is written then.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.actions import ACTION_NAMES, DWELL_TIME, prob_column
from core.errors import UserError
from core.schema import N_SURFACES

if TYPE_CHECKING:
    import pyarrow as pa

    from monitoring.outcomes import OutcomeSet

SERVED_ID_BASE = 1 << 62
DATASET = "served"


@dataclass(frozen=True)
class ServedItem:
    file: str
    line: int
    request_id: str
    ts: float  # epoch seconds
    user_id: int
    surface: int
    variant: str
    post_id: int
    position: int
    propensity: float
    as_of: float = math.nan  # epoch seconds the service served for, NaN = the wall clock (ts)


def _int(value: Any, where: str, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise UserError(f"{where}: must be an integer {bound}, got {value!r}")
    return value


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise UserError(f"{where}: must be epoch seconds, got {value!r}")
    return float(value)


def read_served(path: Path) -> list[ServedItem]:
    """Every item the exposure log under `path` says was served, strictly: the first bad line is a UserError
    naming `file:line` and the field."""
    from monitoring.exposure_frame import exposure_files

    items: list[ServedItem] = []
    first_line: dict[str, str] = {}
    for f in exposure_files(Path(path)):
        with open(f, "rb") as handle:
            for n, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                at = f"{f}:{n}"
                try:
                    record = json.loads(raw)
                except (UnicodeDecodeError, ValueError):
                    raise UserError(f"{at}: not a JSON line") from None
                if not isinstance(record, dict):
                    raise UserError(f"{at}: not a JSON object")
                if record.get("kind", "exposure") != "exposure":
                    continue  # the shadow variant's slate: not shown to anyone
                request_id = record.get("request_id")
                if not isinstance(request_id, str | int) or isinstance(request_id, bool) or str(request_id) == "":
                    raise UserError(f"{at}: request_id: missing or not a string")
                request_id = str(request_id)
                if request_id in first_line:
                    raise UserError(f"{at}: request_id: {request_id} was logged before, at {first_line[request_id]}")
                first_line[request_id] = at
                ts = _seconds(record.get("ts"), f"{at}: ts")
                as_of = _seconds(record["as_of"], f"{at}: as_of") if "as_of" in record else math.nan
                user_id = _int(record.get("user_id"), f"{at}: user_id", low=1)
                surface = _int(record.get("surface", 0), f"{at}: surface", high=N_SURFACES - 1)
                variant = record.get("variant")
                variant = variant if isinstance(variant, str) else ""
                slate = record.get("items")
                if not isinstance(slate, list):
                    raise UserError(f"{at}: items: missing or not a list")
                for k, item in enumerate(slate):
                    if not isinstance(item, dict):
                        raise UserError(f"{at}: items[{k}]: not an object")
                    post_id = _int(item.get("post_id"), f"{at}: items[{k}].post_id", low=1)
                    position = _int(item.get("position", k), f"{at}: items[{k}].position", high=2**31 - 1)
                    p = item.get("propensity")
                    propensity = float(p) if isinstance(p, int | float) and not isinstance(p, bool) else math.nan
                    items.append(
                        ServedItem(
                            str(f), n, request_id, ts, user_id, surface, variant, post_id, position, propensity, as_of
                        )
                    )
    return items


def _hash_id(text: str) -> int:
    return SERVED_ID_BASE + int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def _empty_dataset(out: Path, base: Path, outcomes: Path | None) -> dict[str, Any]:
    """Nothing served yet (a fresh clone's logs/): an empty dataset, so the stage and a merge still run."""
    from core.io import atomic_dir
    from core.schema import write_dataset
    from monitoring.outcomes import read_outcomes

    given_actions = ACTION_NAMES if outcomes is None else tuple(read_outcomes(Path(outcomes)).columns)
    observed = tuple(a for a in ACTION_NAMES if a in given_actions)
    with atomic_dir(Path(out)) as tmp:
        write_dataset(tmp, {}, DATASET, observed, {"exposure": [], "base": str(base)})
    return {"rows": 0, "requests": 0, "observed_actions": list(observed), "outcomes": "none (nothing served)"}


def _authors(frame: pd.DataFrame, where: pd.Series, base: Path) -> pd.Series:
    """The author of each served item; a position served twice in a request, or a post or user the base dataset
    lacks, is a UserError naming the line."""
    from core.schema import read_table

    twice = frame.duplicated(["request_id", "position"]).to_numpy()
    if twice.any():
        k = int(np.flatnonzero(twice)[0])
        raise UserError(
            f"{where[k]}: items: position {frame.position[k]} is served twice in request {frame.request_id[k]}"
        )
    posts = read_table(Path(base), "posts", columns=["post_id", "author_id"]).to_pandas()
    author = frame["post_id"].map(posts.set_index("post_id")["author_id"])
    if author.isna().any():
        k = int(np.flatnonzero(author.isna().to_numpy())[0])
        raise UserError(f"{where[k]}: post_id: {frame.post_id[k]} is not a post of {base}")
    users = read_table(Path(base), "users", columns=["user_id"]).column("user_id").to_numpy()
    unknown = ~np.isin(frame["user_id"].to_numpy(), users)
    if unknown.any():
        k = int(np.flatnonzero(unknown)[0])
        raise UserError(f"{where[k]}: user_id: {frame.user_id[k]} is not a user of {base}")
    return author


def _simulated_outcomes(
    frame: pd.DataFrame, where: pd.Series, synthetic: Path, world: Any, seed: int, as_of: datetime | None
) -> OutcomeSet:
    """Outcomes drawn from the synthetic truth; a user or post the world lacks is a UserError naming the line."""
    from features.oracle import load_world
    from monitoring.outcomes import simulate_outcomes

    served = frame[["request_id", "user_id", "post_id", "position"]].assign(ts=frame["ts"])
    world = load_world(Path(synthetic)) if world is None else world
    result = simulate_outcomes(served, world, seed=seed, as_of=as_of)
    known = result.frame[prob_column(ACTION_NAMES[0])].notna().to_numpy()
    if not known.all():
        k = int(np.flatnonzero(~known)[0])
        raise UserError(
            f"{where[k]}: post_id: user {frame.user_id[k]} or post {frame.post_id[k]} is not in the "
            f"synthetic world of {synthetic}"
        )
    return result


def _joined_outcomes(frame: pd.DataFrame, where: pd.Series, outcomes: Path, missing_is_no_action: bool) -> OutcomeSet:
    """The outcomes file's rows joined to the served items; a served item without one is a UserError naming the
    line unless `missing_is_no_action`."""
    from monitoring.outcomes import join_outcomes, read_outcomes

    served = frame[["request_id", "user_id", "post_id", "position"]].assign(ts=frame["ts"])
    given = read_outcomes(Path(outcomes))
    result = join_outcomes(served, given, f"file {outcomes}")
    keys = given.assign(_found=True).set_index(["request_id", "post_id"])["_found"]
    found = pd.MultiIndex.from_arrays([served.request_id.astype("string"), served.post_id]).isin(keys.index)
    if not found.all() and not missing_is_no_action:
        k = int(np.flatnonzero(~found)[0])
        raise UserError(
            f"{where[k]}: request {frame.request_id[k]} post {frame.post_id[k]}: no outcome row in {outcomes} "
            "(--allow-missing: no row = no action)"
        )
    return result


def _in_network(frame: pd.DataFrame, author: pd.Series, ts_ms: np.ndarray, base: Path) -> np.ndarray:
    """Whether the base dataset's follows hold (user, author) from before each served item's ts."""
    from core.schema import read_table

    in_network = np.zeros(len(frame), dtype=bool)
    follows = read_table(Path(base), "follows").to_pandas()
    if len(follows):
        pairs = pd.DataFrame(
            {"follower_id": frame["user_id"], "followee_id": author.astype(np.int64), "row": frame.index}
        )
        hit = pairs.merge(follows, on=["follower_id", "followee_id"])
        created_ms = hit["created_at"].astype("datetime64[ms, UTC]").astype("int64").to_numpy()
        hit = hit[created_ms <= ts_ms[hit["row"].to_numpy()]]
        in_network[hit["row"].to_numpy()] = True
    return in_network


def _impressions(
    frame: pd.DataFrame,
    author: pd.Series,
    ts_ms: np.ndarray,
    in_network: np.ndarray,
    result: OutcomeSet,
    observed: tuple[str, ...],
    with_probs: bool,
) -> pa.Table:
    """The impressions table (see the module doc); `with_probs`: the outcomes carry the true p_<action>."""
    import pyarrow as pa

    from core.schema import TS

    out_frame = result.frame.reset_index(drop=True)
    columns: dict[str, pa.Array] = {
        "impression_id": pa.array(
            [_hash_id(f"{r}:{p}") for r, p in zip(frame.request_id, frame.position, strict=True)], pa.int64()
        ),
        "request_id": pa.array([_hash_id(r) for r in frame.request_id], pa.int64()),
        "user_id": pa.array(frame["user_id"].to_numpy(np.int64)),
        "post_id": pa.array(frame["post_id"].to_numpy(np.int64)),
        "author_id": pa.array(author.to_numpy(np.int64)),
        "ts": pa.array(ts_ms, pa.int64()).cast(TS),
        "surface": pa.array(frame["surface"].to_numpy(np.int8)),
        "position": pa.array(frame["position"].to_numpy(np.int32)),
        "in_network": pa.array(in_network),
    }
    for a in ACTION_NAMES:
        values = out_frame[a].to_numpy(np.int8) if a in observed else np.zeros(len(frame), np.int8)
        columns[a] = pa.array(values, pa.int8())
    dwell = out_frame[DWELL_TIME].to_numpy(np.float32) if DWELL_TIME in out_frame else np.zeros(len(frame), np.float32)
    columns[DWELL_TIME] = pa.array(dwell, pa.float32())
    if with_probs:
        for a in ACTION_NAMES:
            columns[prob_column(a)] = pa.array(out_frame[prob_column(a)].to_numpy(np.float32), pa.float32())
    columns["x_served_request"] = pa.array(frame["request_id"].astype(str).tolist(), pa.string())
    columns["x_variant"] = pa.array(frame["variant"].tolist(), pa.string())
    columns["x_propensity"] = pa.array(frame["propensity"].to_numpy(np.float64), pa.float64())
    return pa.table(columns)


def served_dataset(
    exposure: Path,
    base: Path,
    out: Path,
    outcomes: Path | None = None,
    synthetic: Path | None = None,
    as_of: datetime | None = None,
    seed: int = 0,
    missing_is_no_action: bool = False,
    world: Any = None,
) -> dict[str, Any]:
    """Writes the served items of the exposure log under `exposure`, with their outcomes (a file, or the synthetic
    truth of the dataset `synthetic`), as the canonical dataset `out` (atomically; see the module doc). `base` is
    the dataset the posts, users and follows come from. `world`: the synthetic world to draw from instead of the one
    `synthetic`'s manifest rebuilds (a simulation's world, whose days and posts run past the dataset's).

    Returns:
        rows, requests, observed actions and the outcome source's description.
    """
    from core.io import atomic_dir
    from core.schema import Manifest, write_dataset

    if (outcomes is None) == (synthetic is None):
        raise UserError("--outcomes/--synthetic: give exactly one source of outcomes")
    Manifest.load(Path(base))
    items = read_served(exposure)
    if not items:
        return _empty_dataset(out, base, outcomes)
    frame = pd.DataFrame([asdict(i) for i in items])
    frame["ts"] = frame["as_of"].where(frame["as_of"].notna(), frame["ts"])  # the time each request was served for
    where = frame["file"] + ":" + frame["line"].astype(str)
    author = _authors(frame, where, base)
    ts_ms = (
        np.full(len(frame), int(as_of.timestamp() * 1000), dtype=np.int64)
        if as_of is not None
        else np.round(frame["ts"].to_numpy() * 1000).astype(np.int64)
    )
    if synthetic is not None:
        result = _simulated_outcomes(frame, where, synthetic, world, seed, as_of)
    else:
        assert outcomes is not None
        result = _joined_outcomes(frame, where, outcomes, missing_is_no_action)
    observed = tuple(a for a in ACTION_NAMES if a in result.actions)
    in_network = _in_network(frame, author, ts_ms, base)
    table = _impressions(frame, author, ts_ms, in_network, result, observed, with_probs=synthetic is not None)
    params = {
        "exposure": sorted({i.file for i in items}),
        "base": str(base),
        "outcomes": result.detail,
        "as_of": None if as_of is None else as_of.astimezone(UTC).isoformat(),
        "missing_is_no_action": missing_is_no_action,
    }
    with atomic_dir(Path(out)) as tmp:
        manifest = write_dataset(tmp, {"impressions": table}, DATASET, observed, params)
    return {
        "rows": manifest.rows["impressions"],
        "requests": int(frame["request_id"].nunique()),
        "observed_actions": list(observed),
        "outcomes": result.detail,
    }
