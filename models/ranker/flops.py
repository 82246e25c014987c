"""What one ranking request costs: FLOPs of the ranker's serving path for a full history and C candidates, counted by
torch's FlopCounterMode on a synthetic request of the config's shapes (the ids' values do not change the count)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.ranker.model import CandidateBatch, Ranker, RankerConfig
from models.retrieval.model import UserFeatures


def request_flops(cfg: RankerConfig, candidates: int) -> int:
    """FLOPs (multiply and add counted apart) of `Ranker(cfg)` scoring one request of `candidates` candidates on the
    serving path (`encode_user` once, then `score_candidates` in chunks of max_candidates)."""
    if candidates < 1:
        raise ValueError(f"candidates: must be >= 1, got {candidates}")
    torch.manual_seed(0)
    model = Ranker(cfg).eval()
    S, C = cfg.max_history, candidates
    ones = torch.ones(1, S, dtype=torch.int64)
    user = UserFeatures(
        user_ids=torch.ones(1, dtype=torch.int64),
        attribute_ids=torch.ones(1, len(cfg.user_attributes), dtype=torch.int64),
        hist_post_ids=ones,
        hist_author_ids=ones,
        hist_actions=ones,
        hist_surfaces=torch.zeros(1, S, dtype=torch.int64),
        hist_gap_ms=ones,
    )
    cands = CandidateBatch(
        post_ids=torch.ones(1, C, dtype=torch.int64),
        author_ids=torch.ones(1, C, dtype=torch.int64),
        surfaces=torch.zeros(1, C, dtype=torch.int64),
        age_ms=torch.ones(1, C, dtype=torch.int64),
        dense=torch.ones(1, C, len(cfg.candidate_features)),
        attributes=torch.ones(1, C, len(cfg.candidate_attributes), dtype=torch.int64),
        in_network=torch.zeros(1, C, dtype=torch.bool),
        positions=torch.full((1, C), -1),
        valid=torch.ones(1, C, dtype=torch.bool),
    )
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.score_candidates(model.encode_user(user), cands)
    return int(counter.get_total_flops())
