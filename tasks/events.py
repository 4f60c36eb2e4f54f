"""driftloop's Prefect events: the names automations match on, and one typed way to emit them.

    events.emit(events.VALIDATION_FAILED, model="churn", payload={"failed": [...]})

Every event has the model as its resource (`driftloop.model.<name>`), so one automation trigger
(`match={"prefect.resource.id": "driftloop.model.*"}`) covers every model. Delivery is
at-least-once: whatever an event starts must be idempotent.
"""

from __future__ import annotations

import datetime as dt
import math
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from prefect.events import Event

DRIFT_DETECTED = "driftloop.drift.detected"
RETRAIN_REQUESTED = "driftloop.retrain.requested"
MODEL_PROMOTED = "driftloop.model.promoted"
MODEL_REJECTED = "driftloop.model.rejected"
VALIDATION_FAILED = "driftloop.validation.failed"
# the governor learned that a retraining it asked for was rejected or failed
RETRAIN_NEEDS_ATTENTION = "driftloop.retrain.needs_attention"
# a shadow or canary candidate's judgement on live traffic ended its rollout
ROLLOUT_PROMOTED = "driftloop.rollout.promoted"
ROLLOUT_ROLLED_BACK = "driftloop.rollout.rolled_back"
EVENTS: frozenset[str] = frozenset(
    {DRIFT_DETECTED, RETRAIN_REQUESTED, MODEL_PROMOTED, MODEL_REJECTED, VALIDATION_FAILED,
     RETRAIN_NEEDS_ATTENTION, ROLLOUT_PROMOTED, ROLLOUT_ROLLED_BACK}
)  # fmt: skip


def resource(model: str) -> dict[str, str]:
    """The Prefect resource that stands for a model in every driftloop event."""
    return {"prefect.resource.id": f"driftloop.model.{model}", "prefect.resource.name": model}


def emit(
    event: str, *, model: str, payload: Mapping[str, Any], id: uuid.UUID | None = None
) -> Event | None:
    """Queue one driftloop event for the Prefect API in use (`id`: the event's own, where a
    re-send must carry the same; default a new one).

    The payload is made JSON-safe first (numpy scalars become numbers, NaN becomes null). Returns
    the event that was queued, or None where no Prefect API is configured (nothing to send to)
    or Prefect could not queue it. Queued is not delivered: `confirm` says when it arrived.

    Raises:
        ValueError: `event` is not one of `EVENTS` (a typo would otherwise trigger nothing).
    """
    from prefect.events import emit_event

    if event not in EVENTS:
        raise ValueError(f"unknown driftloop event {event!r}; known: {', '.join(sorted(EVENTS))}")
    return emit_event(event=event, resource=resource(model), payload=jsonable(payload), id=id)


def confirm(event_id: uuid.UUID, *, timeout_s: float = 20.0) -> bool:
    """Whether the Prefect server holds the event `event_id`, asked by id until `timeout_s`
    (Prefect's events worker sends it in the background, the server stores events in batches
    every few seconds). False where no server can say."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventIDFilter

    wanted = EventFilter(id=EventIDFilter(id=[event_id]))
    deadline = time.monotonic() + timeout_s
    try:
        with get_client(sync_client=True) as client:
            while True:
                if client.read_events(filter=wanted, limit=1).events:
                    return True
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.5)
    except Exception:  # no server, or one that cannot answer: not confirmed
        return False


def jsonable(value: Any) -> Any:
    """`value` as plain JSON types: numpy values as numbers and lists, NaN and NA as None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray | list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if pd.isna(value):  # pd.NA, pd.NaT, None-likes
        return None
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)
