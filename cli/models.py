"""`ember train ...`, `ember evaluate ...`, `ember index ...`: model training, offline evaluation, ANN indexes."""

from __future__ import annotations

import json
from pathlib import Path

import typer

train_app = typer.Typer(help="Train models on point-in-time training sets.", no_args_is_help=True)
evaluate_app = typer.Typer(help="Offline evaluation against baselines on one split.", no_args_is_help=True)
index_app = typer.Typer(help="ANN indexes over candidate-tower embeddings.", no_args_is_help=True)

SET = typer.Option(
    [], "--set", help="Override a config field: model.<field>=<value> or train.<field>=<value> (repeatable)."
)


def _overrides(items: list[str]) -> dict[str, dict[str, str]]:
    from models.config_overrides import split_overrides

    return split_overrides(items)


RAY_WORKERS = typer.Option(
    0, "--ray-workers", min=0, help="Train on Ray Train with N workers (RAY_ADDRESS, else a local Ray); 0 = here."
)
RAY_GPU = typer.Option(False, "--ray-gpu", help="With --ray-workers: one GPU per worker (nccl).")


def _on_ray(model: str, workers: int, gpu: bool, resume: bool, work: Path | None, **job: object) -> dict[str, object]:
    """The training job on Ray Train (`models.ray_train`); --resume and --work-dir are the local run's."""
    from core.errors import UserError
    from models.ray_train import RayTrainSpec, train_on_ray

    if resume or work is not None:
        raise UserError("--ray-workers: Ray resumes from its own checkpoints; drop --resume and --work-dir")
    return train_on_ray(RayTrainSpec(model, workers=workers, use_gpu=gpu, **job))  # type: ignore[arg-type]


WORK_HELP = (
    "Train here and replace --out whole when done; a killed run resumes from its checkpoint on the next call with "
    "the same settings and inputs (keep it outside DVC's outputs)."
)


@train_app.command("retrieval")
def train_retrieval_cmd(
    training_set: Path = typer.Option(
        Path("data/training/retrieval"),
        "--training-set",
        help="Retrieval training set (`ember features training-set`); ignored with --data.",
    ),
    data: Path | None = typer.Option(
        None, "--data", help="Canonical dataset: train on its click sequences (the served and evaluated model)."
    ),
    out: Path = typer.Option(Path("artifacts/retrieval"), "--out", help="Model directory (best/, checkpoint.pt)."),
    preset: str = typer.Option("small", "--preset", help="Model size: nano, small or base."),
    valid_fraction: float = typer.Option(0.2, "--valid-fraction", help="Newest share of rows used for validation."),
    budget_s: float = typer.Option(60.0, "--budget-s", min=1.0, help="With --data: training wall-clock budget."),
    resume: bool = typer.Option(False, "--resume", help="Continue from out/checkpoint.pt."),
    metrics_out: Path | None = typer.Option(None, "--metrics", help="Also write the metrics JSON here (DVC)."),
    work: Path | None = typer.Option(None, "--work-dir", help=WORK_HELP),
    ray_workers: int = RAY_WORKERS,
    ray_gpu: bool = RAY_GPU,
    overrides: list[str] = SET,
) -> None:
    """Train the two-tower retrieval model: on a dataset's click sequences (--data: the temporal protocol of
    `ember evaluate retrieval`, early stopping on validation Recall@200) or on a Feast training set."""
    from models.retrieval.job import train_retrieval, train_retrieval_events

    sets = _overrides(overrides)
    if data is not None:
        seed = int(sets["train"].pop("seed", 0))
        metrics = train_retrieval_events(
            data, out, preset, sets["model"], sets["train"], budget_s, seed, log=typer.echo
        )
        keys = ("valid_recall@200", "recall@200", "ndcg@10", "best_epoch", "seconds")
    elif ray_workers:
        job = dict(training_set=training_set, out=out, preset=preset, valid_fraction=valid_fraction)
        metrics = _on_ray("retrieval", ray_workers, ray_gpu, resume, work, **job, model_overrides=sets["model"],
                          train_overrides=sets["train"])  # fmt: skip
        keys = ("recall@10", "recall@200", "ndcg@10", "best_epoch", "seconds")
    else:
        metrics = train_retrieval(
            training_set, out, preset, sets["model"], sets["train"], valid_fraction, resume, log=typer.echo, work=work
        )
        keys = ("recall@10", "recall@200", "ndcg@10", "best_epoch", "seconds")
    if metrics_out is not None:
        from core.io import atomic_write_text

        atomic_write_text(metrics_out, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    shown = ", ".join(f"{k}={metrics[k]}" for k in keys if k in metrics)
    typer.echo(f"wrote {out}: {shown}")


@train_app.command("ranker")
def train_ranker_cmd(
    training_set: Path = typer.Option(
        Path("data/training/ranker"), "--training-set", help="Ranker training set (`ember features training-set`)."
    ),
    out: Path = typer.Option(Path("artifacts/ranker"), "--out", help="Model directory (best/, checkpoint.pt)."),
    preset: str = typer.Option("small", "--preset", help="Model size: nano, small or base."),
    valid_fraction: float = typer.Option(0.2, "--valid-fraction", help="Newest share of requests for validation."),
    resume: bool = typer.Option(False, "--resume", help="Continue from out/checkpoint.pt."),
    metrics_out: Path | None = typer.Option(None, "--metrics", help="Also write the metrics JSON here (DVC)."),
    features: Path | None = typer.Option(None, "--features", help="Offline features: history posts' attributes."),
    work: Path | None = typer.Option(None, "--work-dir", help=WORK_HELP),
    ray_workers: int = RAY_WORKERS,
    ray_gpu: bool = RAY_GPU,
    overrides: list[str] = SET,
) -> None:
    """Train the multi-task ranker (early stopping on the validation mean AUC of the recorded actions)."""
    from models.ranker.job import train_ranker_job

    sets = _overrides(overrides)
    if ray_workers:
        job = dict(training_set=training_set, out=out, preset=preset, valid_fraction=valid_fraction, features=features)
        metrics = _on_ray("ranker", ray_workers, ray_gpu, resume, work, **job, model_overrides=sets["model"],
                          train_overrides=sets["train"])  # fmt: skip
    else:
        metrics = train_ranker_job(
            training_set, out, preset, sets["model"], sets["train"], valid_fraction, resume, log=typer.echo,
            features=features, work=work,
        )  # fmt: skip
    if metrics_out is not None:
        from core.io import atomic_write_text

        atomic_write_text(metrics_out, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    shown = ", ".join(f"{k}={metrics[k]}" for k in ("auc_mean", "gauc_mean", "ndcg@10", "best_epoch", "seconds"))
    typer.echo(f"wrote {out}: {shown}")


@train_app.command("sweep")
def train_sweep_cmd(
    training_set: Path = typer.Option(Path("data/training/ranker"), "--training-set", help="Ranker training set."),
    out: Path = typer.Option(Path("artifacts/sweep"), "--out", help="sweep.json and trials/<size>/ go here."),
    preset: str = typer.Option("nano", "--preset", help="The preset each size overrides."),
    sizes: list[str] = typer.Option(
        [], "--size", help="A size as model overrides, e.g. d_model=64,n_layers=2 (repeatable; default: a 2x2 grid)."
    ),
    budget_mflops: float = typer.Option(60.0, "--budget-mflops", help="Most MFLOPs a serving request may cost."),
    candidates: int = typer.Option(500, "--candidates", min=1, help="Candidates of the request the budget prices."),
    select: str = typer.Option("auc_mean", "--select", help="Validation metric the best size is chosen by."),
    features: Path | None = typer.Option(None, "--features", help="Offline features: history posts' attributes."),
    engine: str = typer.Option(
        "prefect", "--engine", help="prefect: one Prefect task per size; tune: Ray Tune trials, ASHA stops laggards."
    ),
    grace_epochs: int = typer.Option(1, "--grace-epochs", help="tune: epochs before ASHA may stop a size."),
    reduction: int = typer.Option(2, "--reduction", help="tune: ASHA keeps the best 1/reduction at each rung."),
    concurrent: int | None = typer.Option(None, "--concurrent", help="tune: trials at once (default: CPUs allow)."),
    overrides: list[str] = SET,
) -> None:
    """Ranker sizes under a FLOP budget as the `ranker-sweep` Prefect flow: trials side by side on Ray
    (prefect-ray) when RAY_ADDRESS is set, else one at a time, or as Ray Tune trials under ASHA (--engine tune);
    the best chosen on validation (flows/sweep.py)."""
    from core.errors import UserError
    from flows.api import prefect_api
    from flows.sweep import run_sweep

    sets = _overrides(overrides)
    if sets["model"]:
        raise UserError("--set: a sweep takes train.<field> only; model fields go in --size")
    parsed = []
    for text in sizes:
        pairs = [item.split("=", 1) for item in text.split(",") if item]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise UserError(f"--size: expected field=value[,field=value...], got {text!r}")
        parsed.append({k.strip(): v.strip() for k, v in pairs})
    params = dict(training_set=str(training_set), out=str(out), sizes=parsed or None, preset=preset,
                  budget_mflops=budget_mflops, candidates=candidates, train=sets["train"],
                  features=str(features) if features else None, select=select, engine=engine,
                  grace_epochs=grace_epochs, reduction=reduction, concurrent=concurrent)  # fmt: skip
    with prefect_api():
        report = run_sweep(**params)
    for row in report["sizes"]:
        shown = (
            f"{select} {row['metrics'].get(select)}"
            if "metrics" in row
            else row.get("skipped") or row.get("stopped_early")
        )
        typer.echo(f"{row['name']:>24} {row['mflops']:>10.3f} MFLOPs  {shown}")
    typer.echo(f"best: {report['best']['name']} ({report['best']['model']}); wrote {out / 'sweep.json'}")


@index_app.command("build")
def index_build_cmd(
    model: Path = typer.Option(Path("artifacts/retrieval/best"), "--model", help="Saved two-tower directory."),
    data: Path | None = typer.Option(
        None, "--data", help="Canonical dataset: post table and queries of a model trained on its click sequences."
    ),
    features: Path = typer.Option(Path("data/features"), "--features", help="Offline features (post_stats)."),
    training_set: Path = typer.Option(
        Path("data/training/retrieval"), "--training-set", help="Training set: build time and held-out users."
    ),
    out: Path = typer.Option(Path("artifacts/index"), "--out", help="Index directory (replaced atomically)."),
    min_recall: float = typer.Option(0.95, "--min-recall", min=0.0, max=1.0, help="Recall@100 gate vs exact."),
    exact_below: int = typer.Option(50_000, "--exact-below", min=1, help="Exact search below this many posts."),
) -> None:
    """Embed every post with the candidate tower into faiss; refuse to publish below the recall gate."""
    from models.retrieval.index import IndexConfig
    from models.retrieval.job import build_event_index, build_retrieval_index

    index_cfg = IndexConfig(exact_below=exact_below, min_recall=min_recall)
    if data is not None:
        meta = build_event_index(model, data, out, index_cfg)
    else:
        meta = build_retrieval_index(model, features, training_set, out, index_cfg)
    typer.echo(
        f"wrote {out}: {meta['kind']} index of {meta['n_items']:,} posts, Recall@100 vs exact {meta['recall_at_100']}"
        f", model {meta['model']}"
    )


@evaluate_app.command("compare")
def evaluate_compare_cmd(
    challenger: Path = typer.Option(..., "--challenger", help="Saved ranker directory (best/) of the challenger."),
    champion: Path = typer.Option(..., "--champion", help="Saved ranker directory of the champion."),
    training_set: Path = typer.Option(Path("data/training/ranker"), "--training-set", help="Ranker training set."),
    features: Path | None = typer.Option(None, "--features", help="Offline features: history posts' attributes."),
    valid_fraction: float = typer.Option(0.2, "--valid-fraction", help="Newest share of requests scored."),
    out: Path = typer.Option(..., "--out", help="JSON with both models' metrics on the same window."),
    data: Path | None = typer.Option(
        None, "--data", help="Dataset whose temporal test window scores both two-towers (with the two below)."
    ),
    challenger_retrieval: Path | None = typer.Option(
        None, "--challenger-retrieval", help="Saved two-tower directory of the challenger."
    ),
    champion_retrieval: Path | None = typer.Option(
        None, "--champion-retrieval", help="Saved two-tower directory of the champion."
    ),
) -> None:
    """Score the challenger and the champion ranker on the same validation window, and with --data their two-towers
    on the same test window (what the promotion gate uses)."""
    from release.compare import compare_models, summary_lines

    result = compare_models(challenger, champion, training_set, out, features, valid_fraction, data,
                            challenger_retrieval, champion_retrieval)  # fmt: skip
    for line in summary_lines(result):
        typer.echo(line)


@evaluate_app.command("retrieval")
def evaluate_retrieval_cmd(
    data: Path = typer.Option(Path("data/movielens"), "--data", help="Canonical dataset to evaluate on."),
    protocol: str = typer.Option("leave-one-out", "--protocol", help="leave-one-out or temporal."),
    out: Path = typer.Option(Path("metrics/retrieval_eval.json"), "--out", help="Metrics JSON (all models)."),
    preset: str = typer.Option("nano", "--preset", help="Two-tower and SASRec size."),
    budget_s: float = typer.Option(60.0, "--budget-s", min=1.0, help="Training budget per trained model, seconds."),
    converge: bool = typer.Option(
        False, "--converge", help="No budget: SASRec and the two-tower early-stop on validation (patience, epoch cap)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of every trained model."),
    seeds: str | None = typer.Option(
        None, "--seeds", help="Comma-separated seeds (overrides --seed): metrics are the mean, with their std."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config field: model.<field>, train.<field> or sasrec.<field>=<value>."
    ),
) -> None:
    """Two-tower vs most-popular, item-kNN and SASRec on the same split, full ranking, seen items filtered."""
    from core.errors import UserError
    from core.io import atomic_write_text
    from models.config_overrides import split_overrides
    from models.retrieval.evaluate import evaluate_retrieval

    sets = split_overrides(overrides, ("model", "train", "sasrec"))
    try:
        seed_list = [int(s) for s in seeds.split(",")] if seeds else [seed]
    except ValueError:
        raise UserError(f"--seeds: {seeds!r} is not a comma-separated list of integers") from None
    report = evaluate_retrieval(
        data, protocol, preset, None if converge else budget_s, seed_list[0], sets["model"], sets["train"],
        log=typer.echo, seeds=seed_list, sasrec_overrides=sets["sasrec"],
    )  # fmt: skip
    atomic_write_text(out, json.dumps(report, indent=2, sort_keys=True) + "\n")
    for name, row in report["models"].items():
        std = report.get("std", {}).get(name, {})
        typer.echo(
            f"{name:>12}: NDCG@10 {row['ndcg@10']:.4f} (std {std.get('ndcg@10', 0.0):.4f})  "
            f"Recall@10 {row['recall@10']:.4f}  Recall@200 {row['recall@200']:.4f}  ({row.get('seconds', 0):.1f} s)"
        )
    typer.echo(f"wrote {out}")


@evaluate_app.command("ranker")
def evaluate_ranker_cmd(
    training_set: Path = typer.Option(
        Path("data/training/ranker"), "--training-set", help="Ranker training set (`ember features training-set`)."
    ),
    out: Path = typer.Option(Path("metrics/ranker_eval.json"), "--out", help="Metrics JSON (all models)."),
    test_days: float | None = typer.Option(None, "--test-days", help="Test = the last N days (KuaiRand: 2)."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Test = the newest share of requests."),
    valid_fraction: float = typer.Option(0.1, "--valid-fraction", help="Early-stopping share of the rest."),
    preset: str = typer.Option("nano", "--preset", help="Ranker size: nano, small or base."),
    heads: str = typer.Option("independent,funnel", "--heads", help="Ranker head modes to train, comma-separated."),
    baselines: str = typer.Option("logistic,lightgbm,mmoe", "--baselines", help="Baselines, comma-separated."),
    seed: int = typer.Option(0, "--seed", help="Seed of every trained model."),
    features: Path | None = typer.Option(None, "--features", help="Offline features: history posts' attributes."),
    protocol: str | None = typer.Option(
        None, "--protocol", help="kuairand-a: the peers' protocol A on an imported KuaiRand set (--data)."
    ),
    data: Path = typer.Option(Path("data/kuairand"), "--data", help="--protocol: the imported KuaiRand data set."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="--protocol: seeds, comma-separated (mean and spread)."),
    peers: Path | None = typer.Option(
        None, "--peers", help="--protocol: the peers' results/ folder (../shared/peers/kuairand/results)."
    ),
    user_counters: str = typer.Option(
        "frozen", "--user-counters", help="--protocol: frozen (as the peers) | realtime."
    ),
    user_history: str = typer.Option("frozen", "--user-history", help="--protocol: frozen (as the peers) | realtime."),
    counters: str = typer.Option("peers", "--counters", help="--protocol: peers (their counter set) | extended."),
    overrides: list[str] = SET,
) -> None:
    """The ranker (independent and funnel heads) vs logistic regression, LightGBM and MMoE on one temporal split;
    per-action AUC, GAUC, logloss, calibration and request NDCG@10 (and the oracle on synthetic data).
    With --protocol kuairand-a: the peers' split, features and metrics instead (models/ranker/kuairand.py)."""
    from core.io import atomic_write_text
    from models.ranker.job import evaluate_ranker_job

    sets = _overrides(overrides)
    if protocol is not None:
        schemes = {"user_counters": user_counters, "user_history": user_history, "counters": counters}
        _evaluate_protocol(protocol, data, out, preset, heads, seeds, peers, schemes, sets)
        return
    report = evaluate_ranker_job(
        training_set,
        test_days=test_days,
        test_fraction=None if test_days is not None else test_fraction,
        valid_fraction=valid_fraction,
        preset=preset,
        head_modes=[h for h in heads.split(",") if h],
        baselines=[b for b in baselines.split(",") if b],
        model_overrides=sets["model"],
        train_overrides=sets["train"],
        seed=seed,
        log=typer.echo,
        features=features,
    )
    atomic_write_text(out, json.dumps(report, indent=2, sort_keys=True) + "\n")
    names = list(report["models"])
    typer.echo(f"{'AUC / GAUC':>16} " + " ".join(f"{n:>20}" for n in names))
    for action, row in report["table"].items():
        cells = " ".join(f"{row[n]['auc']:>9.4f} / {row[n]['gauc']:<8.4f}" for n in names)
        typer.echo(f"{action:>16} {cells}")
    typer.echo(f"{'seconds':>16} " + " ".join(f"{report['models'][n]['seconds']:>20.1f}" for n in names))
    typer.echo(f"wrote {out}")


def _evaluate_protocol(
    protocol: str,
    data: Path,
    out: Path,
    preset: str,
    heads: str,
    seeds: str,
    peers: Path | None,
    schemes: dict[str, str],
    sets: dict[str, dict[str, str]],
) -> None:
    from core.errors import UserError
    from core.io import atomic_write_text
    from models.ranker.kuairand import MAIN_TARGETS, evaluate_protocol_a

    if protocol != "kuairand-a":
        raise UserError(f"--protocol: unknown {protocol!r} (choose from kuairand-a)")
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds: not a comma-separated list of integers: {seeds!r}") from None
    if peers is not None and not any(Path(peers).glob("A_*_s*.json")):
        raise UserError(f"--peers: no protocol A result files (A_<model>_s<seed>.json) in {peers}")
    report = evaluate_protocol_a(
        data,
        preset,
        sets["model"],
        sets["train"],
        seed_list,
        [h for h in heads.split(",") if h],
        peers=peers,
        log=typer.echo,
        **schemes,
    )
    atomic_write_text(out, json.dumps(report, indent=2, sort_keys=True) + "\n")
    test = report["models"][report["chosen_head_mode"]]["test"]
    typer.echo(f"chosen on the valid day: {report['chosen_head_mode']} heads; test, mean +- std over {seed_list}:")
    for a in MAIN_TARGETS:
        cells = "  ".join(f"{m} {test[a][m]['mean']:.4f} +- {test[a][m]['std']:.4f}" for m in ("auc", "gauc"))
        typer.echo(f"{a:>8}: {cells}")
    for cell, v in report.get("verdict", {}).items():
        word = "met (+0.01)" if v["plus_0.01"] else "met" if v["met"] else "missed"
        typer.echo(f"{cell:>12}: {v['ours']:.4f} vs {v['best_peer']} {v['peer']:.4f} ({v['margin']:+.4f}) {word}")
    typer.echo(f"wrote {out}")
