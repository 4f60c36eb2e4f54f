"""The monitoring pass as Prefect tasks, for `flows/monitoring.py` to wire (each shows in the UI).

champion = champion_task(settings)
window = window_task(settings, champion=champion)
found = drift_task(window, champion=champion, settings=settings)
...
result = publish_task(result, settings=settings)
"""

from __future__ import annotations

import socket
import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks import artifacts, events, files, registry, traffic, validation
from tasks.evaluate import primary_metric
from tasks.monitor import canary, checks, evidence, governor, reports, requests
from tasks.monitor.drift import DriftResult, detect_drift
from tasks.monitor.feedback import labelled_traffic
from tasks.monitor.governor import Decision, Signals
from tasks.monitor.quality import Quality
from tasks.monitor.window import Window, read_window
from tasks.serve.routing import Mode
from tasks.settings import Settings

if TYPE_CHECKING:  # Serve's app (and Ray) load only where a rollout runs
    from tasks.serve import rollout


@task(name="load-champion", cache_policy=NO_CACHE)
def champion_task(settings: Settings) -> checks.Champion:
    """The champion to judge, with its holdout metrics and its training sample."""
    return checks.load_champion(settings)


@task(name="read-window", cache_policy=NO_CACHE)
def window_task(
    settings: Settings, *, champion: checks.Champion, now: datetime | None = None
) -> Window:
    """The window of the prediction log the champion answered (only the needed columns), labels
    joined, sampled; its outliers set apart."""
    window = read_window(
        home=settings.home,
        model=settings.dataset.name,
        features=champion.features.all,
        target=settings.dataset.target,
        config=settings.monitoring,
        now=now,
        version=champion.version,
    )
    window = checks.without_outliers(window, champion=champion, settings=settings)
    logger = get_run_logger()
    logger.info("window: %s", window.describe())
    if window.outliers is not None and window.outliers.rows:
        logger.warning("outliers: %s", window.outliers.describe())
    return window


@task(name="drift", cache_policy=NO_CACHE)
def drift_task(window: Window, *, champion: checks.Champion, settings: Settings) -> DriftResult:
    """Per-feature and prediction drift against the champion's training sample (Evidently)."""
    config = settings.monitoring
    if window.rows == 0:
        return DriftResult(columns=[], drift_share=config.drift_share)
    current = checks.with_outputs(window.table, champion.outputs(window.table))
    reference = checks.with_outputs(champion.reference, champion.outputs(champion.reference))
    features = champion.features
    return detect_drift(
        current,
        reference,
        numeric=features.numeric,
        categorical=features.categorical,
        predictions=champion.output_columns,
        config=config,
    )


@task(name="data-quality", cache_policy=NO_CACHE)
def data_quality_task(
    window: Window, *, champion: checks.Champion, settings: Settings
) -> validation.ValidationReport | None:
    """The window against the validation suite: missing values, unseen categories, schema."""
    if window.rows == 0:
        return None
    return checks.check_data(window, champion=champion, settings=settings)


@task(name="quality", cache_policy=NO_CACHE)
def quality_task(window: Window, *, champion: checks.Champion, settings: Settings) -> Quality:
    """Measured on feedback labels where enough arrived, else estimated (CBPE)."""
    return checks.judge_quality(window, champion=champion, settings=settings)


@task(name="retrain-governor", cache_policy=NO_CACHE)
def govern_task(
    *,
    settings: Settings,
    champion: checks.Champion,
    window: Window,
    drift: DriftResult,
    quality: Quality,
    data_quality: validation.ValidationReport | None,
    now: datetime | None = None,
) -> Decision:
    """Retrain or hold, and why (logged, and kept in the governor's state). What became of the
    last request is read back first; a request is recorded only where a Prefect server (not a
    temporary one of this process) can take it."""
    from prefect.settings import get_current_settings

    signals = Signals(
        window_end=window.end,
        rows=window.rows,
        champion=champion.version,
        drift=drift.drift,
        drifted_features=drift.drifted_features,
        drift_share=drift.share,
        prediction_drift=drift.prediction_drift,
        quality=quality,
        data_problems=checks.data_problems(window, data_quality),
        rows_after=window.rows_after,
        labels_after=window.labels_after,
    )
    decision = governor.govern(
        home=settings.home,
        model=settings.dataset.name,
        signals=signals,
        config=settings.monitoring,
        now=now,
        is_alive=run_is_alive,
        can_deliver=get_current_settings().api.url is not None,
    )
    logger = get_run_logger()
    if decision.outcome is not None:
        outcome = decision.outcome
        logger.info("request %s: %s", outcome.get("request"), outcome.get("status"))
    logger.info("governor: %s: %s", decision.action, decision.reason)
    if decision.needs_attention:
        logger.warning(decision.needs_attention)
    return decision


@task(name="publish-monitoring", cache_policy=NO_CACHE)
def publish_task(result: reports.MonitorResult, *, settings: Settings) -> reports.MonitorResult:
    """Events, the HTML/JSON reports under <home>/reports/, the drift table and the decision."""
    return reports.publish(result, home=settings.home)


@task(name="log-upkeep", cache_policy=NO_CACHE)
def upkeep_task(settings: Settings, *, now: datetime | None = None) -> dict[str, Any]:
    """Compact the days of the log and the labels no writer touches any more (before
    yesterday, UTC), and retire what is older than `monitoring.retention_days`."""
    home, model = settings.home, settings.dataset.name
    moment = now or datetime.now(timezone.utc)
    before = (moment - timedelta(days=1)).date()
    compacted = sum(traffic.compact(home=home, model=model, kind=kind, before=before)
                    for kind in traffic.KINDS)  # fmt: skip
    days = settings.monitoring.retention_days
    retired = 0 if days is None else traffic.retire(home=home, model=model, days=days, now=moment)
    found = traffic.usage(home=home, model=model)
    get_run_logger().info("log upkeep: %d day(s) compacted, %d folder(s) retired; the log: %s",
                          compacted, retired, found.describe())  # fmt: skip
    return {"compacted_days": compacted, "retired_folders": retired, "usage": found.to_dict()}


# The retraining flow's steps ---------------------------------------------------------------------


@task(name="claim-request", cache_policy=NO_CACHE)
def claim_task(*, settings: Settings, key: str, record: dict[str, Any]) -> requests.Claim:
    """Claim a retrain request for this run: `claimed` the first time (or after a run that
    died holding it), `done` once a run ended it, `busy` while a live run holds it."""
    from prefect.runtime import flow_run

    found, held = requests.claim(
        home=settings.home, model=settings.dataset.name, key=key,
        run_id=str(flow_run.get_id() or "local"), record=record, is_alive=run_is_alive,
    )  # fmt: skip
    if found != "claimed":
        get_run_logger().warning("request %s: %s (%s): nothing to do", key, found,
                                 held.get("status"))  # fmt: skip
    return found


@task(name="record-outcome", cache_policy=NO_CACHE)
def finish_task(
    *, settings: Settings, key: str, status: requests.Ended, version: int | None, detail: str
) -> None:
    """What the retraining did with the request, for the governor to read back."""
    requests.finish(home=settings.home, model=settings.dataset.name, key=key, status=status,
                    version=version, detail=detail)  # fmt: skip
    get_run_logger().info("request %s: %s%s", key, status,
                          f" (v{version})" if version is not None else "")  # fmt: skip


def run_is_alive(record: dict[str, Any]) -> bool:
    """Whether the run holding a claim (`record`: its flow run id, pid and host) may still be
    running: its process is alive where this host can see it, and Prefect does not say it
    ended. True where neither can say, so a request is never retrained twice at once."""
    import psutil
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    pid = record.get("pid")
    here = record.get("host") == socket.gethostname() and isinstance(pid, int)
    if here and not psutil.pid_exists(pid):
        return False  # its process is gone: it ended, or was killed with its runner
    try:
        key = uuid.UUID(str(record.get("flow_run_id")))
    except ValueError:
        return isinstance(pid, int)  # no Prefect run to ask: the process decides
    try:
        with get_client(sync_client=True) as client:
            found = client.read_flow_run(key)
    except ObjectNotFound:
        return False
    except Exception:
        return True
    return found.state is None or not found.state.is_final()


@task(name="labelled-traffic-for-retraining", cache_policy=NO_CACHE)
def labelled_traffic_task(*, settings: Settings, run_id: str) -> dict[str, Any]:
    """Labelled production rows of the last `retraining.feedback_days` that pass the batch
    checks, split into rows to train on, to choose the weighting on and for the gate, written
    under <home>/retraining/<model>/<run_id>/ (`folder`; None: no champion, the source alone)."""
    ds = settings.dataset
    folder = files.join(settings.home, "retraining", ds.name, run_id)
    if registry.champion(root=settings.home, model=ds.name) is None:
        return {"folder": None, "train_rows": 0, "select_rows": 0, "gate_rows": 0}
    rows = labelled_traffic(champion=checks.load_champion(settings), settings=settings)
    for name, table in (("train", rows.train), ("select", rows.select), ("gate", rows.gate)):
        _parquet(table, files.join(folder, f"{name}.parquet"))
    logger = get_run_logger()
    logger.info("labelled production rows: %s", rows.describe())
    return {"folder": folder, **rows.to_dict()}


def _parquet(table: pa.Table, location: str) -> str:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return files.write_atomic(location, sink.getvalue().to_pybytes())


# A rollout's judgement on live traffic (flows/serving.py) ---------------------------------------


@task(name="begin-rollout", cache_policy=NO_CACHE)
def begin_rollout_task(
    settings: Settings, *, candidate: int, mode: Mode, reason: str
) -> rollout.Rollout:
    """The candidate beside the champion (or the rollout of it already running: resumed)."""
    from tasks.serve import ServeArgs, rollout

    args = ServeArgs.of(settings)
    now = rollout.running(args)
    if now is not None and now.candidate == candidate and now.mode == mode:
        get_run_logger().info("resuming the %s", now.describe())
        return now
    started = rollout.begin(args, candidate=candidate, mode=mode, share=settings.rollout.share,
                            reason=reason)  # fmt: skip
    get_run_logger().info("began the %s", started.describe())
    return started


@task(name="judge-rollout", cache_policy=NO_CACHE)
def judge_rollout_task(settings: Settings, state: rollout.Rollout) -> canary.Judgement:
    """One judgement of the candidate against the champion on the rows since it began."""
    ds = settings.dataset
    found = evidence.read_evidence(home=settings.home, model=ds.name, target=ds.target,
                                 rollout=state, slices=ds.slices)  # fmt: skip
    gate = settings.gate
    verdict = canary.judge(found, config=settings.rollout,
                           metric_name=primary_metric(ds.task, gate),
                           champion=state.champion, candidate=state.candidate,
                           min_slice_rows=gate.min_slice_rows,
                           max_slice_regression=gate.max_slice_regression)  # fmt: skip
    get_run_logger().info("%s v%d: %s: %s", state.mode, state.candidate,
                          verdict.decision.replace("_", " "), verdict.reason)  # fmt: skip
    return verdict


@task(name="conclude-rollout", cache_policy=NO_CACHE)
def conclude_rollout_task(
    settings: Settings, state: rollout.Rollout, *, promote: bool, reason: str,
    verdict: canary.Judgement | None = None,
) -> rollout.Rollout:  # fmt: skip
    """Promote or roll back (the alias and the app together), then say so: a Prefect event
    (`driftloop.rollout.promoted` / `rolled_back`) and an artifact with the evidence."""
    from tasks.serve import ServeArgs, rollout

    evidence = verdict.to_dict() if verdict is not None else {}
    ended = rollout.conclude(ServeArgs.of(settings), state, promote=promote, reason=reason,
                             evidence=evidence)  # fmt: skip
    model = settings.dataset.name
    table = verdict.markdown() if verdict is not None else f"**{ended.status}**: {reason}"
    create_markdown_artifact(
        markdown=f"# {model}: {ended.describe()}\n\n{table}\n",
        key=artifacts.key("rollout", model),
        description=f"{model}: {ended.describe()}",
    )  # fmt: skip
    name = events.ROLLOUT_PROMOTED if promote else events.ROLLOUT_ROLLED_BACK
    events.emit(name, model=model, payload={
        "mode": state.mode, "champion": state.champion, "candidate": state.candidate,
        "share": state.share, "reason": reason, "started_at": state.started_at,
        "ended_at": ended.ended_at, "judgement": evidence,
    })  # fmt: skip
    get_run_logger().info("%s", ended.describe())
    return ended
