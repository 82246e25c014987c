"""Ember core: the action vocabulary, the canonical data schema, typed config and shared I/O helpers.

Nothing here imports any other Ember package (the ground floor of the dependency direction).
"""
