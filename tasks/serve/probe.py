"""Is the Serve app up, and which version does it serve? Asked over HTTP, without Ray.

    status = probe(settings.serving, model="churn")   # ServeStatus(url, running, version, reason)

Light on purpose: `driftloop status` imports this module alone (no Ray, no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from tasks import files
from tasks.settings import ServingConfig

API_KEY_HEADER = "X-API-Key"
VERSION_HEADER = "X-Model-Version"  # each answer names the version that gave it
_PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ServeStatus:
    """What the app serves now, as a client sees it."""

    url: str
    running: bool  # /healthz answers at all
    version: int | None  # the version a replica answered with (None: none served)
    reason: str | None = None  # why nothing is served, when it is not

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "running": self.running, "version": self.version,
                "reason": self.reason}  # fmt: skip


def url(serving: ServingConfig) -> str:
    host = f"[{serving.host}]" if ":" in serving.host else serving.host
    return f"http://{host}:{serving.port}"


def probe(serving: ServingConfig, *, model: str | None = None) -> ServeStatus:
    """Ask `/healthz` over HTTP: works from any process, no Ray connection needed. With `model`,
    an app serving another model there (another home's) counts as not running."""
    base = url(serving)
    try:
        answer = httpx.get(f"{base}/healthz", timeout=_PROBE_TIMEOUT_S)
        body = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        return ServeStatus(url=base, running=False, version=None, reason=files.first_line(exc))
    if not isinstance(body, dict) or (model is not None and body.get("model") != model):
        why = f"{base} serves something else, not the {model!r} app"
        return ServeStatus(url=base, running=False, version=None, reason=why)
    if answer.status_code == 200:
        return ServeStatus(url=base, running=True, version=body.get("version"))
    reason = body.get("reason") or body.get("detail") or f"HTTP {answer.status_code}"
    return ServeStatus(url=base, running=True, version=None, reason=str(reason))


def headers(serving: ServingConfig) -> dict[str, str]:
    """The headers a client sends: the API key when one is set."""
    key = serving.api_key
    return {API_KEY_HEADER: key.get_secret_value()} if key is not None else {}
