"""Seeded A/A and A/B experiments on a synthetic world, to check the readout's error rates against the truth.

Each run: users split between two variants by the service's own sticky assignment (serving.ab.bucket with a fresh
salt per run); each user makes `requests_per_user` requests on the world's last day; a variant's policy fills a
slate of `k` from a pool of recent posts; what users do is drawn from the truth model (monitoring.outcomes.
simulate_outcomes), and the readout (monitoring.ab_report.ab_test) decides. Policies:

- "random": k posts of the pool, uniformly;
- "relevance": the pool's top k by true relevance plus Gaussian noise of scale `noise` (0 = the oracle's order).

An A/A run gives both variants the same policy (every "ship" is a false positive); an A/B run gives the challenger
a policy with a higher true reward (the report states the gap), so "ship challenger" is the right decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from monitoring.ab_report import ab_test, item_rewards, per_user


@dataclass(frozen=True)
class Policy:
    kind: str = "random"  # random | relevance
    noise: float = 0.0

    def label(self) -> str:
        return "random" if self.kind == "random" else f"relevance + N(0, {self.noise:g})"


def serve(world: Any, users: np.ndarray, t: np.ndarray, policy: Policy, k: int, pool: int, rng: np.random.Generator
          ) -> np.ndarray:  # fmt: skip
    """(R, k) post indices: each request's slate, from `pool` posts created in the 48 h before its time."""
    from features.synth import DAY_S, relevance

    lo = np.searchsorted(world.post_created_s, t - 2 * DAY_S)
    hi = np.searchsorted(world.post_created_s, t, side="right")
    cand = lo[:, None] + np.floor(rng.random((len(t), pool)) * (hi - lo)[:, None]).astype(np.int64)
    if policy.kind == "random":
        return cand[:, :k]
    rel = relevance(world, users[:, None], cand, t[:, None], np.zeros(cand.shape))
    order = np.argsort(-(rel + policy.noise * rng.standard_normal(rel.shape)), axis=1)[:, :k]
    return np.take_along_axis(cand, order, 1)


def experiment(
    world: Any,
    control: Policy,
    challenger: Policy,
    seed: int,
    n_users: int = 2_000,
    requests_per_user: int = 3,
    k: int = 10,
    pool: int = 50,
    share: float = 0.5,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """One seeded experiment: the readout of `ab_test` (control "A", challenger "B")."""
    from features.synth import DAY_S, EPOCH
    from monitoring.outcomes import simulate_outcomes
    from serving.ab import bucket

    rng = np.random.default_rng(np.random.SeedSequence([seed, 1805]))
    end = world.cfg.days * DAY_S
    eligible = np.flatnonzero(world.user_created_s < end - DAY_S)
    users = rng.choice(eligible, min(n_users, len(eligible)), replace=False)
    salt = f"ab-sim-{seed}"
    variant = np.array(["A" if bucket(salt, int(u) + 1) < share else "B" for u in users])
    req_user = np.repeat(users, requests_per_user)
    req_variant = np.repeat(variant, requests_per_user)
    t = end - 1 - rng.integers(0, DAY_S - 1, len(req_user))
    slates = np.empty((len(t), k), dtype=np.int64)
    for name, policy in (("A", control), ("B", challenger)):
        rows = req_variant == name
        slates[rows] = serve(world, req_user[rows], t[rows], policy, k, pool, rng)
    served = pd.DataFrame({
        "request_id": np.repeat(np.arange(len(t)), k).astype(str),
        "user_id": np.repeat(req_user + 1, k),
        "post_id": slates.ravel() + 1,
        "position": np.tile(np.arange(k), len(t)),
        "ts": np.repeat(t + EPOCH.timestamp(), k),
        "variant": np.repeat(req_variant, k),
    })  # fmt: skip
    outcomes = simulate_outcomes(served, world, seed=seed)
    return ab_test(per_user(item_rewards(outcomes.frame)), "A", {"A": share, "B": 1 - share}, alpha)


def error_rates(world: Any, control: Policy, challenger: Policy, runs: int, first_seed: int = 0, **kw: Any
                ) -> dict[str, Any]:  # fmt: skip
    """Over `runs` seeded experiments: how often each decision came out, the mean true reward per variant, the
    share of runs with a sample-ratio alarm."""
    decisions = {"ship": 0, "keep": 0, "none": 0}
    truth: dict[str, list[float]] = {"A": [], "B": []}
    srm = significant = 0
    for seed in range(first_seed, first_seed + runs):
        r = experiment(world, control, challenger, seed, **kw)
        decisions[r["decision"]["action"]] += 1
        srm += bool(r["srm"]["mismatch"])
        significant += bool(r["comparisons"]["B"]["significant"])
        for v in truth:
            truth[v].append(r["variants"][v]["true_reward_per_request"])
    return {
        "runs": runs,
        "control": control.label(),
        "challenger": challenger.label(),
        "ship_rate": decisions["ship"] / runs,
        "significant_rate": significant / runs,  # either direction: an A/A run's false-positive rate
        "decisions": decisions,
        "srm_rate": srm / runs,
        "true_reward": {v: float(np.mean(x)) for v, x in truth.items()},
    }


def _off_policy_requests(
    world: Any, rng: np.random.Generator, n_requests: int, pool: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Requests on the world's last day: (N,) user indexes, (N,) times (s), (N, pool) candidate post indexes drawn
    from the posts of each request's last 48 h."""
    from features.synth import DAY_S

    end = world.cfg.days * DAY_S
    eligible = np.flatnonzero(world.user_created_s < end - DAY_S)
    users = rng.choice(eligible, n_requests)
    t = end - 1 - rng.integers(0, DAY_S - 1, n_requests)
    lo = np.searchsorted(world.post_created_s, t - 2 * DAY_S)
    hi = np.searchsorted(world.post_created_s, t, side="right")
    if (hi - lo < pool).any():
        raise ValueError(f"off_policy_run: fewer than {pool} posts in some request's 48 h window")
    cand = lo[:, None] + np.stack([rng.choice(h - low, pool, replace=False) for low, h in zip(lo, hi, strict=True)])
    return users, t, cand


def _slate_rewards(world: Any, users: np.ndarray, t: np.ndarray, posts: np.ndarray, outcome_seed: int) -> pd.DataFrame:
    """Per served item (request-major, slot order): its drawn outcomes' reward and its true expected reward, for the
    (N, k) slates of post indexes `posts` served to `users` at `t`."""
    from features.synth import EPOCH
    from monitoring.outcomes import simulate_outcomes

    n_requests, k = posts.shape
    served = pd.DataFrame({
        "request_id": np.repeat(np.arange(n_requests), k).astype(str),
        "user_id": np.repeat(users + 1, k),
        "post_id": posts.ravel() + 1,
        "position": np.tile(np.arange(k), n_requests),
        "ts": np.repeat(t + EPOCH.timestamp(), k),
    })  # fmt: skip
    return item_rewards(simulate_outcomes(served, world, seed=outcome_seed).frame)


def off_policy_run(
    world: Any,
    seed: int,
    n_requests: int = 6_000,
    k: int = 10,
    pool: int = 30,
    log_noise: float = 1.0,
    temperature: float = 0.5,
    target_noise: float | None = None,
    samples: int = 2_000,
) -> dict[str, Any]:
    """Logs `n_requests` slates the way an exploring variant serves them (serving/selectors/explore.py: Plackett-
    Luce over the pool's standardised scores at `temperature`, the logged propensities estimated from `samples`
    draws that include the served one), with scores = true relevance + N(0, log_noise) standing in for a model;
    draws their outcomes from the truth and estimates a deterministic target's reward with IPS, SNIPS and DR. The
    target ranks the same scores (target_noise None: what serving the ranked order instead would earn) or another
    model's, true relevance + N(0, target_noise). Its true reward on the same requests is computed from the truth
    model's probabilities of its slates."""
    from features.synth import relevance
    from monitoring.off_policy import estimates, fit_reward_model, predict_reward
    from serving.selectors.explore import plackett_luce, standardised

    rng = np.random.default_rng(np.random.SeedSequence([seed, 1806]))
    users, t, cand = _off_policy_requests(world, rng, n_requests, pool)
    rel = relevance(world, users[:, None], cand, t[:, None], np.zeros(cand.shape))
    log_scores = rel + log_noise * rng.standard_normal(rel.shape)
    target_scores = log_scores if target_noise is None else rel + target_noise * rng.standard_normal(rel.shape)

    def outcomes(slots: np.ndarray, outcome_seed: int) -> pd.DataFrame:
        return _slate_rewards(world, users, t, np.take_along_axis(cand, slots, 1), outcome_seed)

    z = np.stack([standardised(row) for row in log_scores])
    logged = np.empty((n_requests, k), dtype=np.int64)
    propensities = np.empty((n_requests, k))
    for r in range(n_requests):
        slate, marginals, _ = plackett_luce(z[r] / temperature, k, samples, rng)
        logged[r], propensities[r] = slate, marginals[slate, np.arange(k)]
    logged_items = outcomes(logged, seed)
    rewards = logged_items["reward"].to_numpy().reshape(n_requests, k)
    target_slots = np.argsort(-target_scores, axis=1)[:, :k]
    target_probs = (logged == target_slots).astype(np.float64)
    # The reward model: per slot, a line in the logging score (what a deployed model's log holds), fitted on the log.
    coef = fit_reward_model(np.take_along_axis(z, logged, 1)[:, :, None], rewards)
    q_logged = predict_reward(coef, np.take_along_axis(z, logged, 1)[:, :, None])
    q_target = predict_reward(coef, np.take_along_axis(z, target_slots, 1)[:, :, None]).sum(1)
    truth_items = outcomes(target_slots, seed + 1)
    truth = float(truth_items["true_reward"].to_numpy().reshape(n_requests, k).sum(1).mean())
    logging_truth = float(logged_items["true_reward"].to_numpy().reshape(n_requests, k).sum(1).mean())
    per_request = rewards.sum(1)
    est = estimates(rewards, propensities, target_probs, q_logged, q_target)
    errors = {name: abs(est[name] - truth) / abs(truth) for name in ("ips", "snips", "dr")}
    return {
        "truth": truth,
        "logging_truth": logging_truth,
        # the on-policy floor: how well the log's own mean knows the logging policy's reward
        "logging_observed": float(per_request.mean()),
        "reward_sd": float(per_request.std(ddof=1)),
        "estimates": est,
        "relative_error": errors,
    }
