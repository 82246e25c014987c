"""The A/B readout: per-variant reward with confidence intervals, a stated test, a sample-ratio check, a decision.

Unit: the user. Variants are assigned per user (serving/ab.py, a salted sticky hash), so a user's requests are not
independent draws; every variance here is taken over users. The metric is a ratio of per-user sums,

    R_v = sum_u S_u / sum_u N_u     S_u = the user's reward over the window, N_u = the user's requests,

the reward of one served item being the blend of what the user did with it, sum_k w_k a_k over the binary actions
of models.ranker.tasks.TASKS (the served blend's signed weights: a report costs 234 clicks' worth). Its variance is the
delta method's, Var(R) ~ Var(S - R N) / (n mean(N)^2), the standard treatment of a ratio metric whose
denominator is random (Deng et al., "Applying the Delta Method in Metric Analytics", 2018).

Test: fixed-horizon, two-sided Welch z-test on R_challenger - R_control at `alpha` (Bonferroni-corrected over the
challengers), read once at the end of the window; peeking daily and stopping at the first significant day inflates
the error rate, which this report does not guard against. The sample-ratio check is a chi-square goodness-of-fit of
the users per variant against the configured shares; below `srm_alpha` (0.001) the assignment is broken and no
decision is made. On a synthetic world the true reward of each variant (sum_k w_k p_k, the truth model's
probabilities of the served items) is reported beside the logged one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from core.actions import prob_column
from core.errors import UserError
from models.ranker.task_table import TASKS, TaskKind

SRM_ALPHA = 0.001
BLEND: dict[str, float] = {t.name: t.blend_weight for t in TASKS if t.kind is TaskKind.BINARY}


def item_rewards(items: pd.DataFrame, weights: Mapping[str, float] = BLEND) -> pd.DataFrame:
    """Adds `reward` (the blend of the observed 0/1 actions) and, where the truth model's `p_<action>` columns are
    there, `true_reward` (the blend of the probabilities) to one row per served item."""
    out = items.copy()
    observed = [a for a in weights if a in out.columns]
    if not observed:
        raise UserError(f"outcomes: none of the blended actions ({', '.join(weights)}) is a column")
    out["reward"] = sum(weights[a] * out[a].astype(float) for a in observed)
    truth = [a for a in weights if prob_column(a) in out.columns]
    if truth:
        out["true_reward"] = sum(weights[a] * out[prob_column(a)].astype(float).fillna(0.0) for a in truth)
    return out


def per_user(items: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, user): S (reward sum), N (requests) and, with truth, T (true reward sum)."""
    for col in ("variant", "user_id", "request_id", "reward"):
        if col not in items.columns:
            raise UserError(f"served items: column {col!r} is missing (needed for the A/B readout)")
    agg: dict[str, Any] = {"S": ("reward", "sum"), "N": ("request_id", "nunique")}
    if "true_reward" in items.columns:
        agg["T"] = ("true_reward", "sum")
    return items.groupby(["variant", "user_id"], sort=True).agg(**agg).reset_index()


@dataclass(frozen=True)
class RatioEstimate:
    users: int
    requests: int
    mean: float  # reward per request
    var: float  # of the mean, delta method over users

    @property
    def se(self) -> float:
        return math.sqrt(self.var)


def ratio_estimate(s: np.ndarray, n: np.ndarray) -> RatioEstimate:
    """R = sum(s) / sum(n) over users and the delta-method variance of R (ddof 1)."""
    users = len(s)
    if users < 2:
        return RatioEstimate(users, int(n.sum()), float(s.sum() / max(n.sum(), 1)), math.inf)
    r = float(s.sum() / n.sum())
    resid = s - r * n
    var = float(resid.var(ddof=1) / (users * n.mean() ** 2))
    return RatioEstimate(users, int(n.sum()), r, var)


def srm_check(users: Mapping[str, int], shares: Mapping[str, float], alpha: float = SRM_ALPHA) -> dict[str, Any]:
    """Chi-square goodness-of-fit of the observed users per variant against the configured shares."""
    names = [v for v in shares if shares[v] > 0]
    observed = np.array([users.get(v, 0) for v in names], dtype=float)
    total = observed.sum()
    if len(names) < 2 or total == 0:
        return {"test": "chi-square goodness of fit", "p_value": 1.0, "mismatch": False, "alpha": alpha}
    expected = np.array([shares[v] for v in names], dtype=float)
    expected = expected / expected.sum() * total
    chi2, p = stats.chisquare(observed, expected)
    return {
        "test": "chi-square goodness of fit on users per variant",
        "observed": dict(zip(names, observed.astype(int).tolist(), strict=True)),
        "expected": dict(zip(names, np.round(expected, 1).tolist(), strict=True)),
        "chi2": float(chi2),
        "p_value": float(p),
        "alpha": alpha,
        "mismatch": bool(p < alpha),
    }


def ab_test(
    users: pd.DataFrame,
    control: str,
    shares: Mapping[str, float] | None = None,
    alpha: float = 0.05,
    srm_alpha: float = SRM_ALPHA,
) -> dict[str, Any]:
    """The readout from `per_user` rows: every variant's reward per request with its (1 - alpha) interval, each
    challenger against `control` (difference, relative lift, z, p), the sample-ratio check and the decision.

    Raises:
        UserError: `control` is not among the variants, or alpha is not in (0, 1).
    """
    if not 0.0 < alpha < 1.0:
        raise UserError(f"--alpha: must be in (0, 1), got {alpha}")
    names = sorted(users["variant"].astype(str).unique())
    if control not in names:
        raise UserError(f"--control: {control!r} served no users (variants in the log: {', '.join(names) or 'none'})")
    z_ci = stats.norm.ppf(1 - alpha / 2)
    variants: dict[str, Any] = {}
    est: dict[str, RatioEstimate] = {}
    for v in names:
        rows = users[users["variant"].astype(str) == v]
        e = est[v] = ratio_estimate(rows["S"].to_numpy(float), rows["N"].to_numpy(float))
        variants[v] = {"users": e.users, "requests": e.requests, "reward_per_request": e.mean,
                       "ci": [float(e.mean - z_ci * e.se), float(e.mean + z_ci * e.se)]}  # fmt: skip
        if "T" in rows.columns:
            variants[v]["true_reward_per_request"] = float(rows["T"].sum() / max(rows["N"].sum(), 1))
    challengers = [v for v in names if v != control]
    corrected = alpha / max(len(challengers), 1)
    z_crit = stats.norm.ppf(1 - corrected / 2)
    comparisons: dict[str, Any] = {}
    for v in challengers:
        a, b = est[control], est[v]
        diff, se = b.mean - a.mean, math.sqrt(a.var + b.var)
        z = diff / se if se > 0 else 0.0
        p = float(2 * stats.norm.sf(abs(z)))
        comparisons[v] = {
            "difference": diff,
            "ci": [float(diff - z_crit * se), float(diff + z_crit * se)],
            "relative_lift": diff / a.mean if a.mean else math.nan,
            "z": float(z),
            "p_value": p,
            "significant": p < corrected,
        }
    srm = srm_check({v: est[v].users for v in names}, shares or {}, srm_alpha) if shares else None
    return {
        "unit": "user",
        "metric": "blended reward per request (models.ranker.tasks weights over the observed binary actions)",
        "test": f"fixed-horizon two-sided Welch z-test, delta-method variance over users, alpha {alpha}"
        + (f" (Bonferroni over {len(challengers)} challengers: {corrected:.4g} each)" if len(challengers) > 1 else ""),
        "alpha": alpha,
        "control": control,
        "variants": variants,
        "comparisons": comparisons,
        "srm": srm,
        "decision": decide(control, comparisons, srm),
    }


def decide(control: str, comparisons: Mapping[str, Mapping[str, Any]], srm: Mapping[str, Any] | None) -> dict[str, Any]:
    """Ship the best significantly better challenger; keep the control otherwise; no decision under an SRM."""
    if srm is not None and srm["mismatch"]:
        return {"action": "none", "variant": None, "why": f"sample ratio mismatch (p = {srm['p_value']:.2g})"}
    better = [(c["difference"], v) for v, c in comparisons.items() if c["significant"] and c["difference"] > 0]
    if better:
        v = max(better)[1]
        return {"action": "ship", "variant": v, "why": f"{v} beats {control} (p = {comparisons[v]['p_value']:.2g})"}
    worse = [v for v, c in comparisons.items() if c["significant"] and c["difference"] < 0]
    why = f"{', '.join(worse)} significantly worse" if worse else "no significant difference"
    return {"action": "keep", "variant": control, "why": why}


def report_from_log(
    exposure: Any,
    config: Any,
    control: str | None = None,
    outcomes: Any = None,
    synthetic: Any = None,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """`ember ab report`: the served records of the exposure log (shadow records excluded), their outcomes from a
    file or drawn from a synthetic world's truth, read out against the variants config's shares.

    Args:
        exposure: the exposure log (file or folder, rotated files included).
        config: the variants YAML the service ran with (shares and champion).
        control: the baseline variant; default the config's champion (the variant with the largest share).
    """
    from pathlib import Path

    from monitoring.exposure_frame import read_exposure
    from monitoring.outcomes import join_outcomes, read_outcomes, simulate_outcomes
    from serving.ab import load_config

    cfg = load_config(Path(config))
    given = read_outcomes(Path(outcomes)) if outcomes is not None else None
    world = None
    if given is None:
        if synthetic is None:
            raise UserError("ab report: give --outcomes (a file) or --synthetic (a world to draw outcomes from)")
        from features.oracle import load_world

        world = load_world(Path(synthetic))
    read = read_exposure(Path(exposure))
    served = read.frame
    if served.empty:
        raise UserError(f"{exposure}: no served records in the exposure log")
    # Degraded responses stay in (intent to treat): a variant that falls back more often serves worse feeds.
    degraded = served["degraded"].map(lambda v: v is True) if "degraded" in served.columns else served["post_id"].isna()
    if given is not None:
        outcome_set = join_outcomes(served, given, f"outcomes file {outcomes}")
    else:
        outcome_set = simulate_outcomes(served, world, seed=seed)
    shares = {v.name: v.share for v in cfg.variants}
    users = per_user(item_rewards(outcome_set.frame))
    result = ab_test(users, control or cfg.champion, shares, alpha)
    result["outcomes"] = outcome_set.describe()
    result["log"] = {"files": [str(f) for f in read.files], "records": read.records, "malformed": read.malformed,
                     "items": len(served), "degraded_items": int(degraded.sum())}  # fmt: skip
    return result
