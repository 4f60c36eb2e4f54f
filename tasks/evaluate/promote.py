"""The Prefect tasks of the evaluation stage, and promotion: the challenger becomes a registry
version with its evaluation, gate table and card, and champion only if the gate passed.

    challenger = evaluate_task(predictor, holdout, dataset=ds, config=settings.evaluation)
    champion = champion_task(holdout, root=settings.home, dataset=ds, config=settings.evaluation)
    decision = gate_task(challenger=challenger, champion=champion, config=settings.gate,
                         model=ds.name)
    promotion = promote_task(decision=decision, report=challenger, dataset=ds, root=settings.home,
                             model_dir=str(result.model_dir), training=Training(...))

What training knew of the challenger comes as a `Training` of plain facts: the train stage and
this one are siblings and do not import each other.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import events, files, registry
from tasks.evaluate.gating import GateDecision, HoldoutCheck, gate
from tasks.evaluate.measure import CANNOT_SCORE, EvaluationReport, Predictor, evaluate
from tasks.evaluate.reports import model_card, publish_card, publish_gate, publish_metrics
from tasks.settings import EvaluationConfig, GateConfig

if TYPE_CHECKING:
    from tasks.settings import DatasetConfig


# The champion -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Champion:
    """The champion measured on the challenger's rows, or why it could not be."""

    version: int | None  # None: no champion yet
    report: EvaluationReport | None
    error: str | None = None


def measure_champion(
    rows: pa.Table,
    *,
    root: str,
    dataset: DatasetConfig,
    config: EvaluationConfig,
    on: str = "holdout",
) -> Champion:
    """The champion measured on the challenger's rows; its error when it cannot score them."""
    from tasks.model import load_model

    found = registry.champion(root=root, model=dataset.name)
    if found is None:
        return Champion(version=None, report=None)
    try:
        predictor = load_model(found.location)
        report = evaluate(predictor, rows, dataset=dataset, config=config, on=on)
    except CANNOT_SCORE as exc:  # e.g. a column it needs is gone
        return Champion(version=found.version, report=None, error=f"{type(exc).__name__}: {exc}")
    return Champion(version=found.version, report=report)


# Which rows decide -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    """The gate's decision, the challenger's report on the rows that decided, and on the
    source holdout (the same report when the holdout decided)."""

    decision: GateDecision
    report: EvaluationReport
    holdout: EvaluationReport
    champion: Champion  # measured on the rows that decided

    @property
    def reports(self) -> list[tuple[EvaluationReport, str]]:
        """Every report made, with its role, for the metrics artifacts."""
        found = [(self.report, "challenger")]
        if self.champion.report is not None:
            found.append((self.champion.report, "champion"))
        if self.holdout is not self.report:
            found.append((self.holdout, "challenger-holdout"))
        return found


def judge(
    predictor: Predictor,
    *,
    holdout: pa.Table,
    production: pa.Table | None,
    root: str,
    dataset: DatasetConfig,
    evaluation: EvaluationConfig,
    config: GateConfig,
    holdout_weight: float = 1.0,
) -> Judgement:
    """Measure challenger and champion on the same rows and gate: on `production` (labelled
    production rows neither model trained on) when there is a champion and at least
    `gate.min_production_rows` of them, the holdout then a no-regression check weighing
    `holdout_weight`; else on the holdout, as for a first model."""
    on_holdout = evaluate(predictor, holdout, dataset=dataset, config=evaluation)
    champion = measure_champion(holdout, root=root, dataset=dataset, config=evaluation)
    recent = _labelled_rows(production, target=dataset.target)
    least = config.min_production_rows
    if champion.version is None or recent < least:
        why = (
            "a first model" if champion.version is None
            else f"{recent:,} labelled production rows neither model trained on "
            f"(< gate.min_production_rows {least:,})"
        )  # fmt: skip
        decision = gate(
            challenger=on_holdout, champion=champion.report, config=config,
            champion_version=champion.version, champion_error=champion.error,
            basis=f"the source holdout ({on_holdout.rows:,} rows): {why}",
        )  # fmt: skip
        return Judgement(decision=decision, report=on_holdout, holdout=on_holdout,
                         champion=champion)  # fmt: skip
    assert production is not None
    basis = (
        f"{recent:,} labelled production rows neither model trained on (>= "
        f"gate.min_production_rows {least:,}): the present decides; the source holdout "
        f"({on_holdout.rows:,} rows) is a no-regression check"
    )
    check = HoldoutCheck(on_holdout, champion.report, weight=holdout_weight)
    try:
        on_recent = evaluate(predictor, production, dataset=dataset, config=evaluation,
                             on="production")  # fmt: skip
    except CANNOT_SCORE as exc:  # what it would serve cannot go through it, e.g. a new feature
        decision = gate(
            challenger=on_holdout, champion=champion.report, config=config,
            champion_version=champion.version, champion_error=champion.error, holdout=check,
            basis=basis, challenger_error=f"{type(exc).__name__}: {exc}",
        )  # fmt: skip
        return Judgement(decision=decision, report=on_holdout, holdout=on_holdout,
                         champion=champion)  # fmt: skip
    measured = measure_champion(production, root=root, dataset=dataset, config=evaluation,
                                on="production")  # fmt: skip
    decision = gate(
        challenger=on_recent, champion=measured.report, config=config,
        champion_version=measured.version, champion_error=measured.error, holdout=check,
        basis=basis,
    )  # fmt: skip
    return Judgement(decision=decision, report=on_recent, holdout=on_holdout, champion=measured)


def _labelled_rows(rows: pa.Table | None, *, target: str) -> int:
    if rows is None or target not in rows.column_names:
        return 0
    return rows.num_rows - rows[target].null_count


# Prefect tasks ------------------------------------------------------------------------------------


@task(name="evaluate-model", cache_policy=NO_CACHE)
def evaluate_task(
    predictor: Predictor,
    holdout: pa.Table,
    *,
    dataset: DatasetConfig,
    config: EvaluationConfig,
    role: str = "challenger",
) -> EvaluationReport:
    """Measure a model on the holdout; publish its metrics as a table artifact."""
    report = evaluate(predictor, holdout, dataset=dataset, config=config)
    publish_metrics(report, model=dataset.name, role=role)
    return report


@task(name="promotion-gate", cache_policy=NO_CACHE)
def gate_task(
    *,
    challenger: EvaluationReport,
    champion: Champion,
    config: GateConfig,
    model: str,
) -> GateDecision:
    """Apply the gate's rules; publish the gate table (markdown artifact `gate-<model>`)."""
    decision = gate(
        challenger=challenger, champion=champion.report, config=config,
        champion_version=champion.version, champion_error=champion.error,
    )  # fmt: skip
    publish_gate(decision, model=model)
    return decision


@task(name="evaluate-and-gate", cache_policy=NO_CACHE)
def judge_task(
    predictor: Predictor,
    *,
    holdout: pa.Table,
    production: pa.Table | None,
    root: str,
    dataset: DatasetConfig,
    evaluation: EvaluationConfig,
    config: GateConfig,
    holdout_weight: float = 1.0,
) -> Judgement:
    """Challenger and champion on the rows that decide (`judge`); publishes each report's
    metrics and the gate table, and logs which rows decided."""
    from prefect import get_run_logger

    found = judge(
        predictor, holdout=holdout, production=production, root=root, dataset=dataset,
        evaluation=evaluation, config=config, holdout_weight=holdout_weight,
    )  # fmt: skip
    for report, role in found.reports:
        publish_metrics(report, model=dataset.name, role=role)
    publish_gate(found.decision, model=dataset.name)
    logger = get_run_logger()
    logger.info("gate decided on %s", found.decision.basis)
    if found.champion.error is not None:
        logger.warning("champion v%s: %s", found.champion.version, found.champion.error)
    logger.info("gate: %s", found.decision.summary())
    return found


# Promotion ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Training:
    """How the challenger was trained, recorded in its registry version and on its card (the flow
    fills it from tasks.train's TrainResult and its split)."""

    data_fingerprint: str  # of the source rows it was trained on
    params: Mapping[str, Any]  # the training settings
    train_rows: int
    best_epoch: int
    metric_name: str  # the validation metric the best epoch was chosen by, e.g. "val_auc"
    best_metric: float

    def metadata(self) -> dict[str, Any]:
        """The facts as the version's metadata records them."""
        return {
            "data_fingerprint": self.data_fingerprint,
            "params": dict(self.params),
            "train_rows": self.train_rows,
            "best_epoch": self.best_epoch,
            "validation_metric": {self.metric_name: self.best_metric},
        }


@dataclass(frozen=True)
class Promotion:
    """What became of a challenger: its registry version, and whether it is champion now."""

    version: int
    promoted: bool
    previous: int | None  # the champion before
    reason: str
    staged: bool = False  # passed the gate, to be judged on live traffic (shadow or canary) first


@task(name="promote-model", cache_policy=NO_CACHE)
def promote_task(
    *,
    decision: GateDecision,
    report: EvaluationReport,
    dataset: DatasetConfig,
    root: str,
    model_dir: str,
    training: Training | None = None,
    metadata: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, str | bytes] | None = None,
    model_dir_is_temporary: bool = False,
    holdout: EvaluationReport | None = None,
    staged: bool = False,
) -> Promotion:
    """Register the challenger with its decision; make it champion when the gate passed (with
    `staged` and a champion to judge it beside, it is left to a rollout on live traffic).

    Every candidate becomes a registry version (weights, evaluation, gate table, card), so a
    rejection is kept with its reasons and a person can still deploy it by hand. `report` is
    the challenger on the rows that decided (its metrics are the version's `metrics`, the
    baseline the monitor measures decay against), `holdout` on the source holdout when those
    were labelled production rows. The version's metadata is `training`'s facts, which rows
    decided, then `metadata` (which wins on a clash). The champion alias moves by
    compare-and-set against the champion the gate judged against: if another run promoted a
    model meanwhile, this one stays a plain version. Publishes the model card
    (`model-card-<model>`) and emits `driftloop.model.promoted` or `driftloop.model.rejected`.

    `model_dir_is_temporary`: `model_dir` is the only thing in a temporary folder (tasks.train's
    local export for a run on remote storage); that folder is removed once the task is done with
    it, registered or not.
    """
    try:
        return _promote(
            decision=decision, report=report, dataset=dataset, root=root, model_dir=model_dir,
            metadata={
                **(training.metadata() if training is not None else {}),
                "judged_on": {"on": decision.decided_on, "rows": decision.rows,
                              "basis": decision.basis},
                "production_rows": decision.rows if decision.decided_on != "holdout" else 0,
                **({"holdout_metrics": holdout.to_dict()["metrics"]} if holdout else {}),
                **(metadata or {}),
            },
            extra_files=extra_files or {}, holdout=holdout, staged=staged,
        )  # fmt: skip
    finally:
        if model_dir_is_temporary:  # the registry holds its copy now
            shutil.rmtree(Path(model_dir).parent, ignore_errors=True)


def _promote(
    *,
    decision: GateDecision,
    report: EvaluationReport,
    dataset: DatasetConfig,
    root: str,
    model_dir: str,
    metadata: Mapping[str, Any],
    extra_files: Mapping[str, str | bytes],
    holdout: EvaluationReport | None = None,
    staged: bool = False,
) -> Promotion:
    model, previous = dataset.name, decision.champion_version

    def card(version: int | None) -> str:
        return model_card(
            dataset=dataset, report=report, decision=decision, version=version,
            data_fingerprint=metadata.get("data_fingerprint"), params=metadata.get("params"),
            holdout=holdout, recency=metadata.get("recency"),
        )  # fmt: skip

    gate_record = {
        "passed": decision.promote,
        "summary": decision.summary(),
        "judged_against": previous,
    }
    version = registry.register(
        root=root, model=model, model_dir=model_dir,
        metadata={**metadata, "metrics": report.to_dict()["metrics"], "gate": gate_record},
        extra_files={
            **extra_files,
            files.EVALUATION: json.dumps(
                {**report.to_dict(), "holdout": holdout.to_dict() if holdout else None}, indent=1
            ).encode(),
            files.GATE: json.dumps(decision.to_dict(), indent=1).encode(),
            files.MODEL_CARD: card(None).encode(),  # the number is claimed as it is published
        },
    )  # fmt: skip
    advice = decision.advice(version)
    reason = decision.summary() + (f"; {advice}" if advice else "")
    promotion = Promotion(version=version, promoted=False, previous=previous,
                          reason=reason)  # fmt: skip
    if decision.promote and staged and previous is not None:
        reason = f"passed the gate; judged on live traffic before it serves alone: {reason}"
        promotion = replace(promotion, staged=True, reason=reason)
        publish_card(card(version), model=model, description=f"{model} v{version}: to roll out")
        return promotion
    if decision.promote:
        try:
            registry.set_alias(
                root=root, model=model, alias=registry.CHAMPION, version=version,
                reason=f"gate: {decision.summary()}"[:300], expect=previous,
            )  # fmt: skip
            promotion = replace(promotion, promoted=True)
        except registry.AliasMoved as exc:
            promotion = replace(promotion, reason=f"reject: {exc}")
    verdict = "promoted to champion" if promotion.promoted else "registered, not promoted"
    publish_card(card(version), model=model, description=f"{model} v{version}: {verdict}")
    name = events.MODEL_PROMOTED if promotion.promoted else events.MODEL_REJECTED
    payload = decision_payload(decision, version=version, previous=previous)
    payload.update(promote=promotion.promoted, reason=promotion.reason)
    events.emit(name, model=model, payload=payload)
    return promotion


def decision_payload(
    decision: GateDecision, *, version: int | None = None, previous: int | None = None
) -> dict[str, Any]:
    """The figures that explain a gate decision, for the promoted/rejected event."""
    return dict(events.jsonable({
        "promote": decision.promote,
        "version": version,
        "previous_champion": previous,
        "primary_metric": decision.primary_metric,
        "challenger": decision.challenger_value,
        "champion": decision.champion_value,
        "summary": decision.summary(),
        "failed": [
            {"rule": r.rule, "observed": r.observed, "threshold": r.threshold, "detail": r.detail}
            for r in decision.failed
        ],
        "rules": [asdict(r) for r in decision.rules],
    }))  # fmt: skip
