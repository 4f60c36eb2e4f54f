"""A client of the served API, as a user's service calls it: predictions in batches, feedback
labels, the version that answers. It counts what it saw, so a caller can say "no request failed".

    with Client(settings.serving) as api:      # its URL, and its API key when one is set
        ids = api.predict(records)             # one POST /predict; [] when it failed (counted)
        answers = api.predict_table(features)  # Arrow IPC both ways (large batches: predict too)
        unknown = api.feedback(ids, labels)    # POST /feedback, 500 labels a request
        api.seen.failed, api.seen.versions     # failures, the versions that answered
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
import pyarrow as pa

from tasks.serve.probe import VERSION_HEADER, headers, url
from tasks.settings import ServingConfig

FEEDBACK_BATCH = 500
ARROW_FROM = 100  # records: a batch this large travels as Arrow IPC (JSON below it)


@dataclass
class Traffic:
    """What a client saw: answered and failed requests, and the versions that answered."""

    answered: int = 0
    failed: int = 0
    versions: set[int] = field(default_factory=set)


class Client:
    """HTTP to the Serve app; a failed request is counted in `seen`, never raised."""

    def __init__(
        self, serving: ServingConfig, *, seen: Traffic | None = None, timeout_s: float = 60
    ) -> None:
        self.http = httpx.Client(base_url=url(serving), headers=headers(serving), timeout=timeout_s)
        self.seen = seen if seen is not None else Traffic()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.http.close()

    def predict(self, records: list[dict[str, Any]]) -> list[str]:
        """The request ids of the answers ([] when the request failed); a batch of
        `ARROW_FROM` records or more travels as Arrow IPC."""
        if len(records) >= ARROW_FROM:
            answers = self.predict_table(pa.Table.from_pylist(records))
            return [] if answers is None else answers["request_id"].to_pylist()
        body = self._post("/predict", {"records": records})
        if body is None:
            return []
        self.seen.versions.add(int(body["version"]))
        return [p["request_id"] for p in body["predictions"]]

    def predict_table(self, features: pa.Table) -> pa.Table | None:
        """The answers to a table of features, both ways as Arrow IPC: request_id, prediction
        and a probability_<class> column per class (None when the request failed)."""
        from tasks.serve import arrow  # the request rules: torch, which a client may not need

        headers = {"Content-Type": arrow.ARROW, "Accept": arrow.ARROW}
        reply = self._send("/predict", content=arrow.write(features), headers=headers)
        if reply is None:
            return None
        self.seen.versions.add(int(reply.headers[VERSION_HEADER]))
        return arrow.read(reply.content)

    def feedback(self, request_ids: list[str], labels: list[Any]) -> list[str]:
        """The ids the API did not know (their labels were not stored; a whole batch of them is
        a failed request, counted)."""
        given = [{"request_id": r, "label": y} for r, y in zip(request_ids, labels, strict=True)]
        unknown: list[str] = []
        for start in range(0, len(given), FEEDBACK_BATCH):
            batch = given[start : start + FEEDBACK_BATCH]
            body = self._post("/feedback", {"labels": batch})
            unknown += [g["request_id"] for g in batch] if body is None else body["unknown"]
        return unknown

    def wait_for_version(self, version: int | None, *, timeout_s: float = 60) -> bool:
        """Whether GET /model names `version` within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            reply = self.http.get("/model")
            if reply.status_code == 200 and reply.json().get("version") == version:
                return True
            time.sleep(0.5)
        return False

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        reply = self._send(path, json=body)
        return None if reply is None else dict(reply.json())

    def _send(self, path: str, **request: Any) -> httpx.Response | None:
        """POST, counted: the reply of a 200, else None (a refusal or no answer)."""
        try:
            reply = self.http.post(path, **request)
        except httpx.HTTPError:
            reply = None
        if reply is None or reply.status_code != 200:
            self.seen.failed += 1
            return None
        self.seen.answered += 1
        return reply
