"""Multi-task ranker baselines on the tabular training-set features: logistic regression, LightGBM and MMoE.

The ranker training set (`ember features training-set --model ranker`) has one row per impression. Its tabular
view (`tabular_features`) keeps only what is known when the impression is scored:

- numeric user_* / author_* / post_* aggregates (counts go through sign(x) * log1p(|x|), *_rate columns pass),
  hist_length, in_network;
- the post's age at event time, log1p(hours) of event_timestamp - post_created_at_ms;
- string / small-int categorical attributes as hashed one-hot (a fixed number of buckets per column, a stable
  crc32 hash, so train, valid and test frames get the same columns whatever values they hold);
- NaN -> 0, plus one missing indicator per feature group (user, author, post, hist).

Never a label (core.actions.ACTION_NAMES, dwell_time), a ground-truth p_<action>, an id (impression, request,
user, post, author) or `position` (set by the ranker itself after scoring, so unknown at serving time);
`tabular_features` raises if one slips through.

All three baselines share one interface, with T binary tasks (the actions) and an availability mask:

    model.fit(X_train, Y_train, X_valid, Y_valid, mask_train=None, mask_valid=None) -> model
    model.predict(X) -> (N, T) float32 probabilities
    model.seconds           # wall time of fit

Y is (N, T) 0/1 float; a False mask entry (or a NaN label) means the task is not available for that row and
is left out of that task's loss, early stopping and metrics.
"""

from __future__ import annotations

import copy
import time
import zlib
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, Self

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from core.actions import ACTION_NAMES, DWELL_TIME, prob_column
from models.ranker.metrics import auc

ID_COLUMNS: tuple[str, ...] = ("impression_id", "request_id", "user_id", "post_id", "author_id", "post_author_id")
# Known when the row is built but not when it is scored, or not a feature at all.
NON_FEATURE_COLUMNS: tuple[str, ...] = ("event_timestamp", "position", "post_created_at_ms")
LABEL_COLUMNS: frozenset[str] = frozenset((*ACTION_NAMES, DWELL_TIME, *(prob_column(a) for a in ACTION_NAMES)))
FORBIDDEN_COLUMNS: frozenset[str] = LABEL_COLUMNS | frozenset(ID_COLUMNS)
# Categorical column -> number of hashed one-hot buckets.
CATEGORICAL_BUCKETS: dict[str, int] = {
    "user_country": 16,
    "user_language": 16,
    "user_age_bucket": 16,
    "user_activity": 8,
    "post_media_type": 8,
    "post_topic": 32,
    "surface": 8,
}
NUMERIC_PREFIXES: tuple[str, ...] = ("user_", "author_", "post_")
MISSING_GROUPS: tuple[str, ...] = ("user", "author", "post", "hist")


def _bucket(value: Any, n_buckets: int) -> int:
    return zlib.crc32(str(value).encode()) % n_buckets


def _hashed_one_hot(col: pd.Series, n_buckets: int) -> np.ndarray:
    """(N, n_buckets) float32 one-hot of crc32(str(value)) % n_buckets; all zeros for a missing value."""
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    lookup = np.array([_bucket(v, n_buckets) for v in uniques] + [-1], dtype=np.int64)
    buckets = lookup[codes]  # code -1 (missing) -> lookup[-1] = -1
    out = np.zeros((len(col), n_buckets), dtype=np.float32)
    hit = buckets >= 0
    out[np.flatnonzero(hit), buckets[hit]] = 1.0
    return out


def _numeric_columns(df: pd.DataFrame) -> list[str]:
    cols = []
    for c in df.columns:
        if c in FORBIDDEN_COLUMNS or c in NON_FEATURE_COLUMNS or c in CATEGORICAL_BUCKETS:
            continue
        if not (c.startswith(NUMERIC_PREFIXES) or c == "hist_length"):
            continue
        dtype = df[c].dtype
        if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
            cols.append(c)
    return cols


def tabular_features(df: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """(N, F) float32 feature matrix and its F column names from a ranker training-set frame (see module doc).

    The columns depend only on which columns df has, not on its values, so frames cut from one training set
    (train / valid / test) line up.

    Raises:
        AssertionError: a label, p_* or id column among the features (a leakage guard; cannot happen by design).
    """
    n = len(df)
    blocks: list[np.ndarray] = []
    names: list[str] = []
    missing = {g: np.zeros(n, dtype=bool) for g in MISSING_GROUPS}
    for c in _numeric_columns(df):
        x = df[c].to_numpy(dtype=np.float64, na_value=np.nan)
        isnan = np.isnan(x)
        missing["hist" if c.startswith("hist_") else c.split("_", 1)[0]] |= isnan
        x = np.where(isnan, 0.0, x)
        if "_rate" not in c:
            x = np.sign(x) * np.log1p(np.abs(x))
        blocks.append(x.astype(np.float32)[:, None])
        names.append(c)
    if "in_network" in df.columns:
        blocks.append(df["in_network"].fillna(False).to_numpy(dtype=np.float32)[:, None])
        names.append("in_network")
    if "event_timestamp" in df.columns and "post_created_at_ms" in df.columns:
        ts = pd.to_datetime(df["event_timestamp"], utc=True)
        event_ms = ts.to_numpy(dtype="datetime64[ms]").astype(np.int64).astype(np.float64)
        created = df["post_created_at_ms"].to_numpy(dtype=np.float64, na_value=np.nan)
        age_h = (event_ms - created) / 3.6e6
        isnan = np.isnan(age_h) | ts.isna().to_numpy()
        missing["post"] |= isnan
        age = np.log1p(np.clip(np.where(isnan, 0.0, age_h), 0.0, None))
        blocks.append(age.astype(np.float32)[:, None])
        names.append("post_age_log1p_hours")
    for c, n_buckets in CATEGORICAL_BUCKETS.items():
        if c not in df.columns:
            continue
        blocks.append(_hashed_one_hot(df[c], n_buckets))
        names.extend(f"{c}#{b}" for b in range(n_buckets))
    for g in MISSING_GROUPS:
        blocks.append(missing[g].astype(np.float32)[:, None])
        names.append(f"missing_{g}")
    leaked = [c for c in names if c in FORBIDDEN_COLUMNS or c.startswith("p_")]
    assert not leaked, f"tabular_features: label or id columns among the features: {leaked}"
    X = np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0), dtype=np.float32)
    return np.ascontiguousarray(X, dtype=np.float32), names


def label_matrix(df: pd.DataFrame, tasks: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(N, T) float32 0/1 labels (NaN -> 0) and (N, T) bool availability mask (False where the label is NaN)."""
    Y = df[list(tasks)].to_numpy(dtype=np.float32, na_value=np.nan)
    mask = ~np.isnan(Y)
    return np.nan_to_num(Y, nan=0.0), mask


def _prepare(Y: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    Y = np.asarray(Y, dtype=np.float32)
    if Y.ndim != 2:
        raise ValueError(f"labels must be (N, T), got shape {Y.shape}")
    m = ~np.isnan(Y) if mask is None else np.asarray(mask, dtype=bool) & ~np.isnan(Y)
    if m.shape != Y.shape:
        raise ValueError(f"mask shape {m.shape} != labels shape {Y.shape}")
    return np.nan_to_num(Y, nan=0.0), m


def _two_classes(y: np.ndarray) -> bool:
    return len(y) > 0 and 0 < float(y.sum()) < len(y)


def _constant(y: np.ndarray) -> float:
    """Fallback probability of a task that cannot be fitted: its training base rate (0.5 with no rows)."""
    return float(np.clip(y.mean(), 1e-4, 1 - 1e-4)) if len(y) else 0.5


class RankerBaseline(Protocol):
    """What run_baselines needs of a baseline."""

    seconds: float

    def fit(
        self,
        X_train: np.ndarray,
        Y_train: np.ndarray,
        X_valid: np.ndarray,
        Y_valid: np.ndarray,
        mask_train: np.ndarray | None = None,
        mask_valid: np.ndarray | None = None,
    ) -> Self: ...

    def predict(self, X: np.ndarray) -> np.ndarray: ...


class LogisticBaseline:
    """One sklearn LogisticRegression per task on standardised features (train mean / std)."""

    name: ClassVar[str] = "logistic"

    def __init__(self, C: float = 1.0, max_iter: int = 200, seed: int = 0) -> None:
        self.C, self.max_iter, self.seed = C, max_iter, seed
        self.models: list[Any] = []
        self.seconds = 0.0

    def fit(
        self,
        X_train: np.ndarray,
        Y_train: np.ndarray,
        X_valid: np.ndarray,
        Y_valid: np.ndarray,
        mask_train: np.ndarray | None = None,
        mask_valid: np.ndarray | None = None,
    ) -> Self:
        """Fits each task on its available training rows (valid is unused: no early stopping)."""
        from sklearn.linear_model import LogisticRegression

        start = time.perf_counter()
        Y, m = _prepare(Y_train, mask_train)
        X = np.asarray(X_train, dtype=np.float32)
        self.mean = X.mean(axis=0)
        self.std = np.where(X.std(axis=0) > 1e-6, X.std(axis=0), 1.0).astype(np.float32)
        Xs = (X - self.mean) / self.std
        self.models = []
        for t in range(Y.shape[1]):
            y = Y[m[:, t], t]
            if not _two_classes(y):
                self.models.append(_constant(y))
                continue
            clf = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)
            clf.fit(Xs[m[:, t]], y.astype(np.int64))
            self.models.append(clf)
        self.seconds = time.perf_counter() - start
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        Xs = (np.asarray(X, dtype=np.float32) - self.mean) / self.std
        cols = [
            np.full(len(Xs), m, dtype=np.float32) if isinstance(m, float) else m.predict_proba(Xs)[:, 1]
            for m in self.models
        ]
        return np.stack(cols, axis=1).astype(np.float32)


class LightGBMBaseline:
    """One LightGBM binary classifier per task, early-stopped on the task's available validation rows."""

    name: ClassVar[str] = "lightgbm"

    def __init__(
        self,
        n_estimators: int = 500,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 50,
        early_stopping_rounds: int = 30,
        num_threads: int = 2,
        seed: int = 0,
    ) -> None:
        self.params: dict[str, Any] = {
            "n_estimators": n_estimators,
            "learning_rate": learning_rate,
            "num_leaves": num_leaves,
            "min_child_samples": min_child_samples,
            "subsample": 0.8,
            "subsample_freq": 1,
            "colsample_bytree": 0.8,
            "n_jobs": num_threads,
            "random_state": seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbose": -1,
        }
        self.early_stopping_rounds = early_stopping_rounds
        self.models: list[Any] = []
        self.best_iterations: list[int] = []
        self.seconds = 0.0

    def fit(
        self,
        X_train: np.ndarray,
        Y_train: np.ndarray,
        X_valid: np.ndarray,
        Y_valid: np.ndarray,
        mask_train: np.ndarray | None = None,
        mask_valid: np.ndarray | None = None,
    ) -> Self:
        import lightgbm as lgb

        start = time.perf_counter()
        Y, m = _prepare(Y_train, mask_train)
        Yv, mv = _prepare(Y_valid, mask_valid)
        self.models, self.best_iterations = [], []
        for t in range(Y.shape[1]):
            y = Y[m[:, t], t]
            if not _two_classes(y):
                self.models.append(_constant(y))
                self.best_iterations.append(0)
                continue
            clf = lgb.LGBMClassifier(**self.params)
            yv = Yv[mv[:, t], t]
            if _two_classes(yv):
                clf.fit(
                    X_train[m[:, t]],
                    y.astype(np.int64),
                    eval_X=(X_valid[mv[:, t]],),
                    eval_y=(yv.astype(np.int64),),
                    eval_metric="binary_logloss",
                    callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
                )
            else:  # nothing to early-stop on: a short fixed schedule
                clf.set_params(n_estimators=min(100, self.params["n_estimators"]))
                clf.fit(X_train[m[:, t]], y.astype(np.int64))
            self.models.append(clf)
            self.best_iterations.append(int(clf.best_iteration_ or clf.n_estimators))
        self.seconds = time.perf_counter() - start
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        cols = [
            np.full(len(X), m, dtype=np.float32) if isinstance(m, float) else m.predict_proba(X)[:, 1]
            for m in self.models
        ]
        return np.stack(cols, axis=1).astype(np.float32)


class _MMoE(nn.Module):
    """Multi-gate mixture of experts: E shared expert MLPs, a softmax gate and a tower per task."""

    def __init__(self, n_features: int, n_tasks: int, n_experts: int, expert_dim: int, tower_dim: int) -> None:
        super().__init__()
        hidden = 2 * expert_dim
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, expert_dim), nn.ReLU())
            for _ in range(n_experts)
        )
        self.gates = nn.Linear(n_features, n_tasks * n_experts)
        self.towers = nn.ModuleList(
            nn.Sequential(nn.Linear(expert_dim, tower_dim), nn.ReLU(), nn.Linear(tower_dim, 1)) for _ in range(n_tasks)
        )
        self.n_tasks, self.n_experts = n_tasks, n_experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F) features -> (B, T) logits."""
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # (B, E, D)
        gates = self.gates(x).view(-1, self.n_tasks, self.n_experts).softmax(dim=-1)  # (B, T, E)
        mixed = torch.bmm(gates, experts)  # (B, T, D)
        return torch.cat([tower(mixed[:, t]) for t, tower in enumerate(self.towers)], dim=1)


class MMoEBaseline:
    """MMoE in torch on CPU: masked per-task BCE, Adam, early stopping on the validation mean AUC."""

    name: ClassVar[str] = "mmoe"

    def __init__(
        self,
        n_experts: int = 4,
        expert_dim: int = 64,
        tower_dim: int = 32,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        batch_size: int = 1024,
        max_epochs: int = 20,
        patience: int = 2,
        num_threads: int = 2,
        seed: int = 0,
    ) -> None:
        self.n_experts, self.expert_dim, self.tower_dim = n_experts, expert_dim, tower_dim
        self.lr, self.weight_decay, self.batch_size = lr, weight_decay, batch_size
        self.max_epochs, self.patience, self.num_threads, self.seed = max_epochs, patience, num_threads, seed
        self.net: _MMoE | None = None
        self.history: list[dict[str, float]] = []
        self.best_epoch = -1
        self.seconds = 0.0

    def _valid_score(self, X: torch.Tensor, Y: np.ndarray, m: np.ndarray) -> tuple[float, float]:
        """(mean AUC over tasks with both classes, masked mean BCE) on validation."""
        logits = self._logits(X)
        p = 1.0 / (1.0 + np.exp(-logits))
        aucs = [auc(Y[m[:, t], t], p[m[:, t], t]) for t in range(Y.shape[1]) if _two_classes(Y[m[:, t], t])]
        lt = torch.as_tensor(logits)
        bce = F.binary_cross_entropy_with_logits(lt, torch.as_tensor(Y), reduction="none").numpy()
        loss = float((bce * m).sum() / max(m.sum(), 1))
        return (float(np.mean(aucs)) if aucs else float("nan")), loss

    @torch.no_grad()
    def _logits(self, X: torch.Tensor) -> np.ndarray:
        assert self.net is not None, "MMoEBaseline: fit first"
        self.net.eval()
        out = [self.net(X[i : i + 8192]) for i in range(0, len(X), 8192)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.net.n_tasks), dtype=np.float32)

    def fit(
        self,
        X_train: np.ndarray,
        Y_train: np.ndarray,
        X_valid: np.ndarray,
        Y_valid: np.ndarray,
        mask_train: np.ndarray | None = None,
        mask_valid: np.ndarray | None = None,
    ) -> Self:
        start = time.perf_counter()
        prev_threads = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            self._fit(X_train, Y_train, X_valid, Y_valid, mask_train, mask_valid)
        finally:
            torch.set_num_threads(prev_threads)
        self.seconds = time.perf_counter() - start
        return self

    def _fit(
        self,
        X_train: np.ndarray,
        Y_train: np.ndarray,
        X_valid: np.ndarray,
        Y_valid: np.ndarray,
        mask_train: np.ndarray | None,
        mask_valid: np.ndarray | None,
    ) -> None:
        Y, m = _prepare(Y_train, mask_train)
        Yv, mv = _prepare(Y_valid, mask_valid)
        X = np.asarray(X_train, dtype=np.float32)
        self.mean = X.mean(axis=0)
        self.std = np.where(X.std(axis=0) > 1e-6, X.std(axis=0), 1.0).astype(np.float32)
        Xt = torch.as_tensor((X - self.mean) / self.std)
        Xv = torch.as_tensor((np.asarray(X_valid, dtype=np.float32) - self.mean) / self.std)
        Yt, Mt = torch.as_tensor(Y), torch.as_tensor(m.astype(np.float32))
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.net = _MMoE(X.shape[1], Y.shape[1], self.n_experts, self.expert_dim, self.tower_dim)
        # Start each tower at its base rate: the first epochs then learn ranking, not the mean.
        rate = (Y * m).sum(axis=0) / np.maximum(m.sum(axis=0), 1)
        rate = np.clip(rate, 1e-4, 1 - 1e-4)
        for t, tower in enumerate(self.net.towers):
            assert isinstance(tower, nn.Sequential)
            last = tower[-1]
            assert isinstance(last, nn.Linear)
            nn.init.constant_(last.bias, float(np.log(rate[t] / (1 - rate[t]))))
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        best: tuple[float, float] | None = None
        best_state = copy.deepcopy(self.net.state_dict())
        self.history, self.best_epoch, bad = [], -1, 0
        for epoch in range(self.max_epochs):
            self.net.train()
            order = torch.as_tensor(rng.permutation(len(Xt)))
            total = 0.0
            for i in range(0, len(order), self.batch_size):
                idx = order[i : i + self.batch_size]
                mb = Mt[idx]
                if float(mb.sum()) == 0:
                    continue
                bce = F.binary_cross_entropy_with_logits(self.net(Xt[idx]), Yt[idx], reduction="none")
                # Mean over available rows of each task, summed over tasks: a rare task weighs as much per row.
                loss = ((bce * mb).sum(dim=0) / mb.sum(dim=0).clamp(min=1.0)).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            v_auc, v_loss = self._valid_score(Xv, Yv, mv)
            self.history.append({"epoch": epoch, "train_loss": total / max(len(Xt), 1), "valid_auc": v_auc,
                                 "valid_loss": v_loss})  # fmt: skip
            # Higher AUC is better; without any two-class task fall back to lower loss.
            key = (v_auc if not np.isnan(v_auc) else -np.inf, -v_loss)
            if best is None or key > best:
                best, best_state, self.best_epoch, bad = key, copy.deepcopy(self.net.state_dict()), epoch, 0
            else:
                bad += 1
                if bad >= self.patience:
                    break
        self.net.load_state_dict(best_state)

    def predict(self, X: np.ndarray) -> np.ndarray:
        Xs = torch.as_tensor((np.asarray(X, dtype=np.float32) - self.mean) / self.std)
        return (1.0 / (1.0 + np.exp(-self._logits(Xs)))).astype(np.float32)


BASELINES: dict[str, type[LogisticBaseline] | type[LightGBMBaseline] | type[MMoEBaseline]] = {
    "logistic": LogisticBaseline,
    "lightgbm": LightGBMBaseline,
    "mmoe": MMoEBaseline,
}


def make_baseline(name: str, num_threads: int = 2, seed: int = 0) -> RankerBaseline:
    """A baseline by name with its default hyper-parameters."""
    if name == "logistic":
        return LogisticBaseline(seed=seed)
    if name == "lightgbm":
        return LightGBMBaseline(num_threads=num_threads, seed=seed)
    if name == "mmoe":
        return MMoEBaseline(num_threads=num_threads, seed=seed)
    raise ValueError(f"unknown ranker baseline {name!r}; known: {sorted(BASELINES)}")


def run_baselines(
    train_df: pd.DataFrame,
    valid_df: pd.DataFrame,
    test_df: pd.DataFrame,
    actions: Sequence[str],
    names: Sequence[str] = ("logistic", "lightgbm", "mmoe"),
    *,
    num_threads: int = 2,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Fits each named baseline on train (early stopping on valid) and predicts test.

    Returns:
        name -> {"seconds": fit wall time, "predict_seconds": test prediction wall time,
                 "probs": {action: (N_test,) float32 probabilities}}
    """
    X_tr, names_tr = tabular_features(train_df)
    X_va, names_va = tabular_features(valid_df)
    X_te, names_te = tabular_features(test_df)
    if not (names_tr == names_va == names_te):
        raise ValueError("run_baselines: train, valid and test frames give different feature columns")
    Y_tr, m_tr = label_matrix(train_df, actions)
    Y_va, m_va = label_matrix(valid_df, actions)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        model = make_baseline(name, num_threads=num_threads, seed=seed)
        model.fit(X_tr, Y_tr, X_va, Y_va, m_tr, m_va)
        start = time.perf_counter()
        P = model.predict(X_te)
        out[name] = {
            "seconds": model.seconds,
            "predict_seconds": time.perf_counter() - start,
            "probs": {a: P[:, t] for t, a in enumerate(actions)},
        }
    return out
