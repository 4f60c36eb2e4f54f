"""A rollout's evidence: the rows each model answered (or shadowed) since it began, labelled where
feedback came, and the candidate's failures; the milestone's rows the judgement reads.

    found = read_evidence(home=home, model="churn", target="churned", rollout=rollout)
    champion_rows, candidate_rows = milestone_rows(found, 200)

A canary's evidence is the requests each model answered; a shadow's, the same requests answered
by the champion (the prediction log) and scored by the candidate (the shadow log, outputs only,
joined by request id). The judgement is tasks/monitor/canary.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks import traffic
from tasks.monitor.window import with_labels
from tasks.serve.routing import read_failures

if TYPE_CHECKING:
    from tasks.serve.rollout import Rollout

OUTPUTS = (traffic.REQUEST_ID, traffic.PREDICTED_AT, traffic.MODEL_VERSION, traffic.LATENCY_MS,
            traffic.PREDICTION)  # fmt: skip
CANDIDATE = ".candidate"  # the candidate's output columns beside the champion's (a shadow)


@dataclass(frozen=True)
class Evidence:
    """What each model did since the rollout began, with the labels that came for it."""

    mode: str
    champion: pa.Table  # rows: request_id, predicted_at, version, latency, outputs, target
    candidate: pa.Table
    failures: int  # rows the candidate failed on (the champion answered them, or no one)
    started: datetime
    target: str
    classes: list[str] | None  # the probability columns' classes (None: regression)
    slices: tuple[str, ...] = ()  # the dataset's slice columns the rows carry


# Evidence -----------------------------------------------------------------------------------------


def read_evidence(
    *, home: str, model: str, target: str, rollout: Rollout, slices: Sequence[str] = ()
) -> Evidence:
    """The rows each model answered (or shadowed) since the rollout began, with the `slices`
    columns, labelled where feedback came, and the candidate's failures."""
    since = rollout.started
    served = traffic.answered(home=home, model=model, since=since)
    served = empty() if served is None else served
    keep = outputs(served)
    sliced = tuple(c for c in slices if c in served.column_names)
    served = served.select([*keep, *sliced])
    version = served[traffic.MODEL_VERSION] if served.num_rows else pa.array([], pa.int64())
    champion = served.filter(pc.equal(version, rollout.champion))
    if rollout.mode == "shadow":
        shadow = traffic.read(home=home, model=model, kind="shadow", since=since)
        candidate = empty() if shadow is None else shadow.select(
            [c for c in shadow.column_names if c in keep]
        )  # fmt: skip
        candidate = candidate.filter(pc.equal(candidate[traffic.MODEL_VERSION], rollout.candidate))
        common = pc.is_in(champion[traffic.REQUEST_ID], value_set=candidate[traffic.REQUEST_ID])
        champion = champion.filter(common)  # the same requests, answered and shadowed
        if sliced:  # the shadow log keeps outputs only: the slices come from the answered rows
            by_id = champion.select([traffic.REQUEST_ID, *sliced])
            candidate = candidate.join(by_id, traffic.REQUEST_ID)
    else:
        candidate = served.filter(pc.equal(version, rollout.candidate))
    failed = read_failures(home=home, model=model, version=rollout.candidate, since=since)
    classes = [c.removeprefix(traffic.PROBABILITY) for c in keep
               if c.startswith(traffic.PROBABILITY)] or None  # fmt: skip
    return Evidence(
        mode=rollout.mode,
        champion=labelled(champion, home=home, model=model, target=target),
        candidate=labelled(candidate, home=home, model=model, target=target),
        failures=sum(int(f["rows"]) for f in failed),
        started=since,
        target=target,
        classes=classes,
        slices=sliced,
    )


def outputs(rows: pa.Table) -> list[str]:
    """The columns of a log's rows a judgement reads (not the features)."""
    return [c for c in rows.column_names if c in OUTPUTS or c.startswith(traffic.PROBABILITY)]


def labelled(rows: pa.Table, *, home: str, model: str, target: str) -> pa.Table:
    if rows.num_rows == 0:
        return rows
    return with_labels(rows, home=home, model=model, target=target).sort_by(traffic.PREDICTED_AT)


def empty() -> pa.Table:
    return pa.table({traffic.REQUEST_ID: pa.array([], pa.string()),
                     traffic.PREDICTED_AT: pa.array([], pa.timestamp("us", tz="UTC")),
                     traffic.MODEL_VERSION: pa.array([], pa.int64())})  # fmt: skip


def agreement(found: Evidence) -> float | None:
    """A shadow's share of requests whose prediction both models gave alike (labels or not):
    how far apart they are, reported beside the judgement."""
    if found.mode != "shadow" or found.candidate.num_rows == 0:
        return None
    a = found.champion.select([traffic.REQUEST_ID, traffic.PREDICTION])
    b = found.candidate.select([traffic.REQUEST_ID, traffic.PREDICTION])
    pairs = a.join(b, traffic.REQUEST_ID, right_suffix=CANDIDATE)
    if pairs.num_rows == 0:
        return None
    same = pc.equal(pairs[traffic.PREDICTION], pairs[traffic.PREDICTION + CANDIDATE])
    return float(pc.sum(same).as_py() or 0) / pairs.num_rows


def count_labelled(rows: pa.Table, target: str) -> int:
    if target not in rows.column_names:
        return 0
    return rows.num_rows - rows[target].null_count


def milestone_rows(found: Evidence, m: int) -> tuple[pa.Table, pa.Table]:
    """The champion's and the candidate's first `m` labelled rows (a shadow: the first `m`
    labelled requests both answered, one table twice, the candidate's outputs suffixed)."""
    order = [(traffic.PREDICTED_AT, "ascending"), (traffic.REQUEST_ID, "ascending")]
    a = found.champion.filter(pc.is_valid(found.champion[found.target])).sort_by(order)
    if found.mode == "shadow":  # the candidate's outputs beside the champion's, by request id
        b = found.candidate.select(outputs(found.candidate))
        pairs = a.join(b, traffic.REQUEST_ID, right_suffix=CANDIDATE).sort_by(order).slice(0, m)
        return pairs, pairs
    b = found.candidate.filter(pc.is_valid(found.candidate[found.target])).sort_by(order)
    return a.slice(0, m), b.slice(0, m)


def suffix(found: Evidence) -> str:
    return CANDIDATE if found.mode == "shadow" else ""


def y_and_outputs(
    rows: pa.Table, target: str, classes: list[str] | None, *, suffix: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """The labels (class indices in `classes`' order, or values) and the model's outputs (its
    columns end with `suffix`)."""
    if classes is None:
        y = pc.cast(rows[target], pa.float64()).to_numpy()
        return y, pc.cast(rows[traffic.PREDICTION + suffix], pa.float64()).to_numpy()
    index = {c: i for i, c in enumerate(classes)}
    labels = [str(v).lower() if isinstance(v, bool) else str(v) for v in rows[target].to_pylist()]
    known = np.array([label in index for label in labels], dtype=bool)
    y = np.array([index[label] for label, k in zip(labels, known, strict=True) if k], np.int64)
    return y, probabilities(rows, classes, suffix=suffix)[known]


def probabilities(rows: pa.Table, classes: list[str], *, suffix: str = "") -> np.ndarray:
    columns = [f"{traffic.PROBABILITY}{c}{suffix}" for c in classes]
    return np.column_stack([pc.fill_null(rows[c], np.nan).to_numpy() for c in columns])
