"""Dataset summary metrics (DVC metrics): row counts, per-action rates, exposure and oracle calibration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from core.actions import ACTION_NAMES, prob_column
from core.io import atomic_write_text
from core.schema import Manifest, read_table


def dataset_stats(directory: Path) -> dict[str, Any]:
    """Summary of a canonical dataset directory.

    Returns:
        rows per table, the rate of each observed action, the in-network share, click rate at the first and last
        slate positions, and, when ground truth is present, the mean true probability of each action (a generator
        whose sampled rates drift from these is broken).
    """
    manifest = Manifest.load(directory)
    imp = read_table(directory, "impressions")
    n = imp.num_rows
    stats: dict[str, Any] = {"dataset": manifest.dataset, "rows": manifest.rows}
    stats["action_rate"] = {
        a: round(float(pc.mean(imp.column(a)).as_py() or 0.0), 6)
        for a in ACTION_NAMES
        if a in manifest.observed_actions
    }
    stats["in_network_share"] = round(float(pc.mean(imp.column("in_network").cast("int8")).as_py() or 0.0), 6)
    stats["impressions_per_user"] = round(n / max(1, len(pc.unique(imp.column("user_id")))), 3)
    position = imp.column("position").to_numpy()
    click = imp.column("click").to_numpy()
    valid = position >= 0
    if valid.any():
        first, last = int(position[valid].min()), int(position[valid].max())
        stats["click_rate_first_position"] = round(float(click[position == first].mean()), 6)
        stats["click_rate_last_position"] = round(float(click[position == last].mean()), 6)
    if prob_column("click") in imp.column_names:
        stats["oracle_mean_probability"] = {
            a: round(float(np.mean(imp.column(prob_column(a)).to_numpy())), 6) for a in ACTION_NAMES
        }
    return stats


def write_stats(directory: Path, out: Path) -> dict[str, Any]:
    stats = dataset_stats(directory)
    atomic_write_text(out, json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return stats
