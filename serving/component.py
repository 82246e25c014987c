"""What every pipeline component shares: its name is its class name, and it runs for every query unless it says no."""

from __future__ import annotations

from serving.types import Query


class Component:
    @property
    def name(self) -> str:
        return type(self).__name__

    def enabled(self, query: Query) -> bool:
        return True
