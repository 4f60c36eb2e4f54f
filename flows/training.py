"""The training pipeline: validate, split, train on Ray Train, evaluate against the champion, gate.

    python -m flows.training driftloop.yaml        # or: driftloop train

Each stage is a task that shows in the Prefect UI with its artifacts (validation table, dataset
card, learning curve, gate table, model card). A validation failure fails the run before anything
trains; a gate rejection completes the run with "rejected" and the champion keeps its place.
"""

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.naming import run_name
from tasks import data, events, files, traffic, validation
from tasks.errors import quiet_expected_failures
from tasks.evaluate import Training, champion_task, evaluate_task, gate_task, promote_task
from tasks.model import load_model
from tasks.monitor import conform
from tasks.settings import Settings, load_settings, resolve_features
from tasks.train import train_task


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
def read_labelled_traffic(*, settings: Settings, location: str | None = None) -> pa.Table | None:
    """The most recent production rows that have a label by now (None until feedback arrives),
    or the labelled rows at `location` (the retraining flow keeps them out of training)."""
    if location is not None:
        return data.read_table(location)
    return traffic.labelled(
        home=settings.home,
        model=settings.dataset.name,
        target=settings.dataset.target,
        limit=settings.evaluation.production_rows,
    )


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


@task(name="add-labelled-traffic", cache_policy=NO_CACHE)
def add_labelled_traffic(train: pa.Table, *, location: str | None) -> pa.Table:
    """The training split plus the labelled production rows at `location` (written by the
    retraining flow), in the source's columns; the split alone when there are none."""
    if location is None:
        return train
    return pa.concat_tables([train, conform(data.read_table(location), schema=train.schema)])


@flow(name="training-pipeline", flow_run_name=run_name("train"))
def training_pipeline(
    config: str = "driftloop.yaml",
    extra_rows: str | None = None,
    production_rows: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate the source data, train a challenger with Ray Train and promote it only if it beats
    the champion on the same holdout. Parameters: the path of the driftloop.yaml to use; for a
    retraining, Parquet files of labelled production rows to train on too (`extra_rows`) and to
    gate on (`production_rows`, default: the most recent labelled traffic), and `metadata` for
    the new version (what started the run)."""
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

    # Split and train ----------------------------------------------------------------------------
    parts = split_data(table, settings=settings, hashes=hashes)
    train: pa.Table = add_labelled_traffic(parts.train, location=extra_rows)
    result = train_task(train=train, validation=parts.validation, settings=settings)

    # Evaluate the challenger and the champion on the same rows, then gate ---------------------
    recent = read_labelled_traffic(settings=settings, location=production_rows)
    challenger = evaluate_task(
        load_model(result.model_dir), parts.holdout, dataset=ds, config=settings.evaluation,
        production=recent,
    )  # fmt: skip
    champion = champion_task(
        parts.holdout, root=settings.home, dataset=ds, config=settings.evaluation,
        production=recent,
    )  # fmt: skip
    decision = gate_task(
        challenger=challenger, champion=champion, config=settings.gate, model=ds.name
    )

    # Register the challenger with its decision; it becomes champion only if the gate passed ----
    promotion = promote_task(
        decision=decision,
        report=challenger,
        dataset=ds,
        root=settings.home,
        model_dir=str(result.model_dir),
        model_dir_is_temporary=result.model_dir_is_temporary,  # removed once registered
        metadata=metadata,
        training=Training(
            data_fingerprint=fingerprint,
            params=settings.training.model_dump(),
            train_rows=train.num_rows,
            best_epoch=result.best_epoch,
            metric_name=result.metric_name,
            best_metric=result.best_metric,
        ),
        extra_files={
            files.REFERENCE: data.sample_parquet(parts.train, rows=data.REFERENCE_ROWS),
            "suite.json": validation.report_location(settings, fingerprint, files.SUITE),
            "dataset_card.md": validation.report_location(
                settings, fingerprint, files.DATASET_CARD
            ),
        },
    )
    if promotion.promoted:  # where the Serve app runs on this Ray, it serves the new champion
        serve_champion(settings=settings, version=promotion.version)
    return {
        "model": ds.name,
        "decision": "promoted" if promotion.promoted else "rejected",
        "version": promotion.version,
        "champion": promotion.version if promotion.promoted else promotion.previous,
        "reason": promotion.reason,
        decision.primary_metric: round(decision.challenger_value, 4),
        "champion_" + decision.primary_metric: decision.champion_value,
        "data_fingerprint": fingerprint,
        "failed_rules": [r.rule for r in decision.failed],
    }


if __name__ == "__main__":
    quiet_expected_failures()
    print(training_pipeline(config=sys.argv[1] if len(sys.argv) > 1 else "driftloop.yaml"))
