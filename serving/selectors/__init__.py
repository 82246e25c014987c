"""Selectors: order the scored candidates and keep the top of the list."""
