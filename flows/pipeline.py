"""`ember-pipeline`, the main job, and `materialize`, the hourly online-store refresh.

The flows only wire tasks: artifacts come from `dvc repro` (cached, versioned: a rerun with unchanged inputs does no
work), the online store from the same `materialize` function `ember features materialize` calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.tasks import dvc_push, dvc_repro, materialize_online, promotion_gate, publish_data_metrics

PROJECT = Path(__file__).resolve().parents[1]
# The landed stages, in dependency order; each later capability appends its own.
STAGES = (
    "synth",
    "data_stats",
    "features_build",
    "features_apply",
    "training_set_retrieval",
    "train_retrieval",
    "build_index",
    "training_set_ranker",
    "train_ranker",
)


@flow(name="ember-pipeline", log_prints=True)
def ember_pipeline(
    project: str = str(PROJECT), online_store: str = "sqlite", redis: str = "127.0.0.1:6379", push: bool = False
) -> dict[str, Any]:
    """Data -> features -> Feast registry -> retrieval training set -> two-tower -> ANN index -> ranker training set
    -> ranker -> promotion gate (flows/promotion.py against the registry's champion), then the online store, the
    metrics artifact (and `dvc push`)."""
    root = Path(project)
    ran = {stage: dvc_repro(root, stage) for stage in STAGES}
    gate = promotion_gate(root)
    online = materialize_online(root, online_store, redis)
    metrics = publish_data_metrics(root)
    if push:
        dvc_push(root)
    return {
        "stages_run": [s for s, did in ran.items() if did],
        "promotion": {"promoted": gate["decision"]["promote"], "champion": gate["champion"]},
        "online": online,
        "rows": metrics["rows"],
    }


@flow(name="materialize")
def materialize_flow(
    project: str = str(PROJECT), online_store: str = "sqlite", redis: str = "127.0.0.1:6379"
) -> dict[str, Any]:
    """Incremental materialization of the online store (hourly)."""
    return materialize_online(Path(project), online_store, redis)
