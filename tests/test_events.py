"""driftloop's event names and payloads (emission to a real server: tests/test_validation.py)."""

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from tasks import events


def test_the_event_names_are_the_ones_automations_match_on() -> None:
    expected = {
        "driftloop.drift.detected",
        "driftloop.retrain.requested",
        "driftloop.model.promoted",
        "driftloop.model.rejected",
        "driftloop.validation.failed",
        "driftloop.retrain.needs_attention",
        "driftloop.rollout.promoted",  # DESIGN.md's contract: a rollout's end
        "driftloop.rollout.rolled_back",
    }
    assert expected == events.EVENTS


def test_the_resource_of_every_event_is_the_model() -> None:
    assert events.resource("churn") == {
        "prefect.resource.id": "driftloop.model.churn",
        "prefect.resource.name": "churn",
    }


def test_an_unknown_event_name_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match=r"unknown driftloop event 'driftloop\.drift\.detectd'"):
        events.emit("driftloop.drift.detectd", model="churn", payload={})


def test_payloads_become_plain_json() -> None:
    payload = {
        "share": np.float32(0.5),
        "rows": np.int64(3),
        "psi": float("nan"),
        "label": pd.NA,
        "at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        "values": np.array([1, 2]),
        "flags": (True, None),
    }
    safe = events.jsonable(payload)
    assert safe == {
        "share": 0.5,
        "rows": 3,
        "psi": None,
        "label": None,
        "at": "2026-01-01T00:00:00+00:00",
        "values": [1, 2],
        "flags": [True, None],
    }
    json.dumps(safe, allow_nan=False)
