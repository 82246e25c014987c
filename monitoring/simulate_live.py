"""A simulated day served as production serves it: engagements pushed as they happen, the hourly materialize run.

`LiveHours.serve` takes one day's requests `every` simulated hours at a time. For each block: the loop (and the
frozen policy, when it is reported) serves the block's requests at their own times; the users' actions on the
loop's slates are drawn from the truth; every served item with an action goes to the online store through the push
source, as POST /events sends an engagement (`features.live.LiveStore.push_engagements`), so a user's next request
that day reads a history that holds it, as a real user's would; then the deployment's hourly `materialize` flow runs
(it finds nothing new inside a day: the offline features are rebuilt once a day, after the day). The frozen policy
reads the same online store, so it sees the same users' histories the loop does.

`every` = 0 serves the whole day from the features of the day's start (the outcomes drawn after it), as the loop did
before the live path existed. The `--http` loop goes block by block the same way, its engagements sent to the
service as POST /events (monitoring/simulate_http.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import UserError

HOUR_S = 3600


def check_live_hours(live_hours: int) -> None:
    if not 0 <= live_hours <= 24:
        raise UserError(f"--live-hours: must be in [0, 24] (0 = the day served from its start), got {live_hours}")


class LiveHours:
    """One simulated day of the in-process loop, `every` hours at a time (see the module doc)."""

    def __init__(self, project: Path, world: Any, day: int, every: int, seed: int,
                 materialize: Callable[[], object] | None = None) -> None:  # fmt: skip
        self.project, self.world, self.day, self.every, self.seed = project, world, day, every, seed
        self.materialize = materialize
        self.pushed = 0  # engagements pushed this day
        self.materializations = 0
        self._live: Any = None

    def serve(
        self, loop: Any, frozen: Any | None, requests: pd.DataFrame, k: int
    ) -> tuple[list, list, list[list[int]] | None, pd.DataFrame]:
        """(the loop's exposure-log items, the features it read, the frozen policy's slates or None, the loop's
        drawn outcomes), in request order."""
        from flows.simulate import serve_day
        from monitoring import simulate as simulated

        if self.every == 0:
            items, features = serve_day(loop, requests, k)
            slates = [[i["post_id"] for i in s] for s in serve_day(frozen, requests, k)[0]] if frozen else None
            served = simulated.served_frame(requests, [[i["post_id"] for i in s] for s in items])
            return items, features, slates, simulated.slate_outcomes(self.world, served, self.seed + self.day)
        n_blocks, block_of = self.blocks(requests)
        items, features, slates, outcomes = [], [], [] if frozen is not None else None, []
        for block in range(n_blocks):
            part = requests[block_of == block]
            if len(part):
                got, feats = serve_day(loop, part, k)
                items += got
                features += feats
                if slates is not None:
                    slates += [[i["post_id"] for i in s] for s in serve_day(frozen, part, k)[0]]
                drawn, engagements = self.draw_block(block, part, [[i["post_id"] for i in s] for s in got])
                self._push(engagements)
                outcomes.append(drawn)
            if self.materialize is not None:
                self.materialize()
                self.materializations += 1
        return items, features, slates, pd.concat(outcomes, ignore_index=True) if outcomes else pd.DataFrame()

    def _block_seed(self, block: int) -> int:
        return int(np.random.SeedSequence([self.seed, self.day, block, 4242]).generate_state(1)[0])

    def draw_block(self, block: int, requests: pd.DataFrame, slates: list[list[int]]) -> tuple[pd.DataFrame, list]:
        """The users' actions on one block's slates, drawn from the truth (the block's own seed), and the engagements
        they make: (outcomes, [features.store.Engagement])."""
        from monitoring import simulate as simulated

        drawn = simulated.slate_outcomes(self.world, simulated.served_frame(requests, slates), self._block_seed(block))
        return drawn, self._engagements(drawn, requests)

    def blocks(self, requests: pd.DataFrame) -> tuple[int, np.ndarray]:
        """(the number of blocks in the day, each request's block)."""
        from features.synth import DAY_S, EPOCH

        start_s = int(EPOCH.timestamp()) + self.day * DAY_S  # the day's start, as the requests' ts count (unix s)
        block_of = ((requests["ts"].to_numpy(np.float64) - start_s) // (self.every * HOUR_S)).astype(np.int64)
        return -(-24 // self.every), block_of

    def _engagements(self, drawn: pd.DataFrame, requests: pd.DataFrame) -> list:
        """Every drawn item with an action, as an engagement at its request's time."""
        from datetime import UTC, datetime

        from core.actions import ACTION_NAMES
        from features.store import Engagement

        if drawn.empty:
            return []
        mask = np.zeros(len(drawn), dtype=np.int64)
        for bit, action in enumerate(ACTION_NAMES):
            if action in drawn.columns:
                mask |= drawn[action].fillna(0).to_numpy(np.int64).clip(0, 1) << bit
        surface = dict(zip(requests["request_id"].astype(str), requests["surface"].astype(int), strict=True))
        rows = drawn.assign(_mask=mask)[mask > 0]
        post = rows["post_id"].to_numpy(np.int64)
        return [
            Engagement(int(u), int(p), int(self.world.post_author[p - 1] + 1), int(m), surface[str(r)],
                       datetime.fromtimestamp(float(t), UTC))
            for u, p, m, r, t in zip(rows["user_id"], post, rows["_mask"], rows["request_id"], rows["ts"], strict=True)
        ]  # fmt: skip

    def _push(self, engagements: list) -> None:
        """The engagements into the online store through the push source (what POST /events does)."""
        if engagements:
            self._store().push_engagements(engagements)
            self.pushed += len(engagements)

    def _store(self) -> Any:
        from features.live import LiveStore
        from features.store import StoreConfig

        if self._live is None:
            import yaml

            params = yaml.safe_load((self.project / "params.yaml").read_text())
            cfg = StoreConfig(repo=self.project / "features" / "repo", online_store="sqlite")
            self._live = LiveStore(cfg, history_length=int(params["features_build"]["history_length"]))
        return self._live
