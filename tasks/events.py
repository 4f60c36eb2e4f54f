"""driftloop's Prefect events: the names automations match on, and one typed way to emit them.

    events.emit(events.VALIDATION_FAILED, model="churn", payload={"failed": [...]})

Every event has the model as its resource (`driftloop.model.<name>`), so one automation trigger
(`match={"prefect.resource.id": "driftloop.model.*"}`) covers every model. Delivery is
at-least-once: whatever an event starts must be idempotent.
"""

from __future__ import annotations

import datetime as dt
import math
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
EVENTS: frozenset[str] = frozenset(
    {DRIFT_DETECTED, RETRAIN_REQUESTED, MODEL_PROMOTED, MODEL_REJECTED, VALIDATION_FAILED}
)


def resource(model: str) -> dict[str, str]:
    """The Prefect resource that stands for a model in every driftloop event."""
    return {"prefect.resource.id": f"driftloop.model.{model}", "prefect.resource.name": model}


def emit(event: str, *, model: str, payload: Mapping[str, Any]) -> Event | None:
    """Send one driftloop event to the Prefect API in use.

    The payload is made JSON-safe first (numpy scalars become numbers, NaN becomes null). Returns
    the event that was queued, or None where no Prefect API is configured (nothing to send to).

    Raises:
        ValueError: `event` is not one of `EVENTS` (a typo would otherwise trigger nothing).
    """
    from prefect.events import emit_event

    if event not in EVENTS:
        raise ValueError(f"unknown driftloop event {event!r}; known: {', '.join(sorted(EVENTS))}")
    return emit_event(event=event, resource=resource(model), payload=jsonable(payload))


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
