"""Features layer: dataset generation and import, batch features, the Feast repo and online reads."""
