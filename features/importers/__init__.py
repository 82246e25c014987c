"""Importers that map real datasets onto the canonical schema (core.schema)."""
