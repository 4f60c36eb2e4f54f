"""The training pipeline: validate, split, train on Ray Train, evaluate against the champion, gate.

    python -m flows.training driftloop.yaml        # or: driftloop train

Each stage is a task that shows in the Prefect UI with its artifacts (validation table, dataset
card, learning curve, gate table, model card). A validation failure fails the run before anything
trains; a gate rejection completes the run with "rejected" and the champion keeps its place. A
retraining (flows/retraining.py) hands in its labelled production rows: they join the source,
every row weighted by its age with the half-life that predicts the recent rows best, and the gate
judges on the recent rows neither model trained on.
"""

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.naming import run_name
from flows.serving import rollout
from tasks import data, events, files, registry, traffic, validation
from tasks.errors import quiet_expected_failures
from tasks.evaluate import Training, judge_task, promote_task
from tasks.model import load_model
from tasks.settings import Settings, load_settings, resolve_features
from tasks.train import Labelled, train_task, training_rows_task


@task(name="read-source", cache_policy=NO_CACHE)
def read_source(source: str, *, dataset: str) -> pa.Table:
    """All rows of the configured source (a file, a folder or a URI). Data that cannot be read
    fails validation first: the run fails with the one-line reason, and the event says so."""
    try:
        return data.read_table(source)
    except data.DataError as exc:
        events.emit(events.VALIDATION_FAILED, model=dataset,
                    payload=validation.unreadable_payload(dataset, source, exc))  # fmt: skip
        raise


@task(name="split", cache_policy=NO_CACHE)
def split_data(table: pa.Table, *, settings: Settings, hashes: np.ndarray) -> data.Splits:
    """The deterministic train / validation / holdout split (`hashes`: the rows' hashes)."""
    return data.split(table, dataset=settings.dataset, config=settings.split, hashes=hashes)


@task(name="read-labelled-traffic", cache_policy=NO_CACHE)
def read_labelled_traffic(
    *, settings: Settings, folder: str | None = None
) -> tuple[Labelled | None, pa.Table | None]:
    """A retraining's labelled production rows from `folder` (train, select and gate), and the
    rows the gate judges on: the folder's gate rows; for a training from the source alone, the
    most recent labelled traffic the champion did not train on (None until feedback arrives)."""
    if folder is not None:
        tables = {n: data.read_table(files.join(folder, f"{n}.parquet"))
                  for n in ("train", "select", "gate")}  # fmt: skip
        return Labelled(**tables), tables["gate"]
    ds = settings.dataset
    recent = traffic.labelled(home=settings.home, model=ds.name, target=ds.target,
                              limit=settings.evaluation.production_rows)  # fmt: skip
    champion = registry.champion(root=settings.home, model=ds.name)
    if recent is None or champion is None:
        return None, recent
    trained = registry.trained_on(champion)
    if len(trained):
        recent = recent.filter(pc.invert(pc.is_in(recent[traffic.REQUEST_ID], value_set=trained)))
    return None, recent


@task(name="serve-champion", cache_policy=NO_CACHE)
def serve_champion(*, settings: Settings, version: int) -> int | None:
    """Swap the running Serve app to the new champion in place (no restart, no failed request);
    returns the version it serves, None when no app runs on this Ray (the next `driftloop up`
    serves the champion). A failed swap is logged, not raised: the registry already moved."""
    from tasks import serve

    try:
        served = serve.deploy_version(serve.ServeArgs.of(settings), ref=version)
    except Exception as exc:
        get_run_logger().warning("the Serve app still serves its old version: %s", exc)
        return None
    return None if served is None else served.version


@flow(name="training-pipeline", flow_run_name=run_name("train"))
def training_pipeline(
    config: str = "driftloop.yaml",
    traffic: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate the source data, train a challenger with Ray Train and promote it only if it beats
    the champion on the same rows. Parameters: the path of the driftloop.yaml to use; for a
    retraining, the folder of its labelled production rows (`traffic`: train, select and gate
    Parquet files, written by the retraining flow), and `metadata` for the new version (what
    started the run)."""
    declared = load_settings(Path(config), check_source=False)

    # Data, and the reference its profile is judged against --------------------------------------
    table: pa.Table = read_source(declared.dataset.source, dataset=declared.dataset.name)
    hashes = data.row_hashes(table)  # once: the fingerprint and the split both use them
    fingerprint = data.fingerprint(table, hashes=hashes)
    reference = validation.reference_profile(declared)
    profile = reference.table if reference.table is not None else table
    known = validation.known_columns(declared.dataset, profile=profile, table=table)
    settings = resolve_features(declared, known, path=Path(config))
    ds = settings.dataset
    reports = validation.report_location(settings, fingerprint)

    # Validate: nothing below runs on data that breaks its contract ------------------------------
    suite = validation.build_suite(profile, settings=settings, profile_source=reference.source)
    validation.validate_task(
        table,
        suite=suite,
        settings=settings,
        directory=reports,
        source=ds.source,
        fingerprint=fingerprint,
    )

    # Split; a retraining adds its labelled traffic, weighted toward the present, and trains ----
    parts = split_data(table, settings=settings, hashes=hashes)
    labelled, recent = read_labelled_traffic(settings=settings, folder=traffic)
    rows = training_rows_task(parts, labelled, settings=settings)
    result = train_task(
        train=rows.train, validation=rows.validation, settings=settings,
        weights=rows.weights, validation_weights=rows.validation_weights,
    )  # fmt: skip

    # Judge challenger and champion on the same rows: recent labelled traffic once there is enough
    judged = judge_task(
        load_model(result.model_dir), holdout=parts.holdout, production=recent, root=settings.home,
        dataset=ds, evaluation=settings.evaluation, config=settings.gate,
        holdout_weight=rows.holdout_weight,
    )  # fmt: skip
    decision = judged.decision

    # Register the challenger with its decision; it becomes champion only if the gate passed ----
    promotion = promote_task(
        decision=decision,
        report=judged.report,
        holdout=judged.holdout if judged.holdout is not judged.report else None,
        dataset=ds,
        root=settings.home,
        model_dir=str(result.model_dir),
        model_dir_is_temporary=result.model_dir_is_temporary,  # removed once registered
        staged=settings.serving.rollout != "direct",
        metadata={
            **({"recency": rows.recency.to_dict()} if rows.recency else {}),
            **(metadata or {}),
        },
        training=Training(
            data_fingerprint=fingerprint,
            params=settings.training.model_dump(),
            train_rows=rows.train.num_rows,
            best_epoch=result.best_epoch,
            metric_name=result.metric_name,
            best_metric=result.best_metric,
        ),
        extra_files={
            files.REFERENCE: rows.reference(rows=data.REFERENCE_ROWS),
            files.TRAINED_ON: _ids_parquet(rows.trained_on),
            "suite.json": validation.report_location(settings, fingerprint, files.SUITE),
            "dataset_card.md": validation.report_location(
                settings, fingerprint, files.DATASET_CARD
            ),
        },
    )
    promoted, reason = promotion.promoted, promotion.reason
    if promotion.promoted:  # where the Serve app runs on this Ray, it serves the new champion
        serve_champion(settings=settings, version=promotion.version)
    elif promotion.staged:  # beside the champion on live traffic until judged (flows/serving)
        ended = rollout(config=config, candidate=promotion.version, mode=settings.serving.rollout,
                        reason=f"retrained v{promotion.version} passed the gate")  # fmt: skip
        promoted = ended["status"] == "promoted"
        reason = f"{ended['mode']}: {str(ended['status']).replace('_', ' ')}: {ended['reason']}"
    return {
        "model": ds.name,
        "decision": "promoted" if promoted else "rejected",
        "version": promotion.version,
        "champion": promotion.version if promoted else promotion.previous,
        "reason": reason,
        "decided_on": decision.basis,
        decision.primary_metric: round(decision.challenger_value, 4),
        "champion_" + decision.primary_metric: decision.champion_value,
        "data_fingerprint": fingerprint,
        "failed_rules": [r.rule for r in decision.failed],
        "recency": rows.recency.to_dict() if rows.recency else None,
    }


def _ids_parquet(ids: pa.Array) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({traffic.REQUEST_ID: ids}), sink)
    return bytes(sink.getvalue())


if __name__ == "__main__":
    quiet_expected_failures()
    print(training_pipeline(config=sys.argv[1] if len(sys.argv) > 1 else "driftloop.yaml"))
