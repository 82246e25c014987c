"""Filters: decide eligibility; each returns what it kept and what it removed."""

from __future__ import annotations

from dataclasses import dataclass

from serving.types import Candidate


@dataclass(frozen=True)
class FilterResult:
    """What a filter kept and removed, so tests and metrics can see what was dropped and by whom."""

    kept: list[Candidate]
    removed: list[Candidate]
