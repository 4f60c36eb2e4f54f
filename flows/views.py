"""What the `driftloop` command prints: the stack, the served model, the registry, as lines for
people or dicts for `--json`. Pure: it reads what it is given (and the registry, for `models`)."""

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks import stack
from tasks.settings import Settings

if TYPE_CHECKING:
    from tasks.serve.probe import ServeStatus
    from tasks.stack import StackStatus


def serving_line(served: "ServeStatus | None") -> str:
    if served is None:
        return "serving: no champion yet (`driftloop train` makes one)"
    if not served.running:
        return f"serving: not running ({served.url})"
    why = f" ({served.reason})" if served.reason else ""
    return f"serving: {served.url} {v(served.version)}{why}"


def stack_json(state: "StackStatus") -> dict[str, Any]:
    services = {
        name: {"running": s.running, "healthy": s.healthy, "pid": s.pid, "url": s.url}
        for name, s in state.services.items()
    }
    return {
        "home": str(state.home),
        "services": services,
        "prefect_api_url": state.prefect_api_url,
        "dashboard_url": state.dashboard_url,
    }


def models_json(
    settings: Settings, versions: list[int], by_version: dict[int, list[str]]
) -> dict[str, Any]:
    from tasks import registry

    root, model = settings.home, settings.dataset.name
    listed = []
    for version in versions:
        meta = registry.get_version(root=root, model=model, version=version)
        listed.append(
            {
                "version": version,
                "aliases": sorted(by_version.get(version, [])),
                "created_at": meta.get("created_at"),
                "metrics": meta.get("metrics", {}),
            }
        )
    history = [
        {
            "at": c.at,
            "alias": c.alias,
            "from": c.from_version,
            "to": c.to_version,
            "action": c.action,
            "reason": c.reason,
        }
        for c in registry.history(root=root, model=model)
    ]
    aliases = registry.aliases(root=root, model=model)
    return {"model": model, "versions": listed, "aliases": aliases, "history": history}


def describe(state: "StackStatus") -> str:
    if not state.services:
        return f"nothing runs under {state.home} (start it with `driftloop up`)"
    lines = [f"home: {state.home}"]
    for svc in state.services.values():
        health = "up" if svc.healthy else ("starting or unhealthy" if svc.running else "stopped")
        lines.append(f"  {svc.name:<8} {health:<10} pid {svc.pid}  {svc.url or ''}")
    if state.prefect_api_url:
        lines.append(f"Prefect API: {state.prefect_api_url}")
    if state.dashboard_url:
        lines.append(f"Ray dashboard: {state.dashboard_url}")
        token = stack.token_path(home=Path(state.home))
        lines.append(
            f"  it asks for the stack's Ray token: the file {token} (or "
            f"`RAY_AUTH_TOKEN_PATH={token} ray get-auth-token`; plain `ray get-auth-token` "
            "reads ~/.ray, not this home)"
        )
    return "\n".join(lines)


def v(version: int | None) -> str:
    return "none" if version is None else f"v{version}"


def example_yaml(dataset_yaml: str, *, demo: bool = False) -> str:
    """The config `driftloop init` writes; `demo` tunes the monitor to decide on one pass."""
    return (
        (DEMO_MARK if demo else "")
        + "# driftloop settings: point `dataset` at your own Parquet data.\n"
        "# Environment variables override any key: DRIFTLOOP_TRAINING__EPOCHS=5\n"
        + dataset_yaml
        + "training:\n  epochs: 10\n  num_workers: 2\n  use_gpu: auto\n"
        + (DEMO_MONITORING + DEMO_ROLLOUT if demo else "")
    )


DEMO_MARK = "# written by `driftloop demo`, which rewrites this folder's data on each run\n"


def is_demo_config(text: str) -> bool:
    return text.startswith(DEMO_MARK)


# `driftloop demo`: one drifted window decides (the defaults want 2 of the last 3, of 24 hours)
DEMO_MONITORING = """\
monitoring:              # tuned for the demo; the README lists the defaults
  window_hours: null
  window_rows: 2000      # each pass judges the newest 2,000 logged predictions
  min_rows: 500
  windows_needed: 1      # one window with the signal is enough (default: 2 of the last 3)
  windows_considered: 1
  cooldown_hours: 0.1    # the demo can run again after 6 minutes (default: 24 hours)
"""


# `driftloop demo`: a retrained champion is a canary first, judged on a few labelled rows
DEMO_ROLLOUT = """\
serving:
  rollout: canary        # a new champion answers a share of requests until judged (default: direct)
rollout:                 # tuned for the demo; the README lists the defaults
  share: 0.3
  min_rows: 100          # labelled rows of each model before the metric judges (default: 200)
  check_seconds: 2
"""


def rollout_json(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """`status --json`'s `rollout` block: the running rollout, or the last one's outcome."""
    if record is None:
        return None
    keep = ("mode", "champion", "candidate", "share", "status", "reason", "started_at", "ended_at")
    judged = record.get("evidence") or {}
    return {**{k: record.get(k) for k in keep}, "running": record.get("status") == "running",
            "decision": judged.get("decision"), "basis": judged.get("basis")}  # fmt: skip


def rollout_line(record: dict[str, Any]) -> str:
    """One line: a rollout running, or how the last one ended and why."""
    from tasks.serve.routing import describe

    return f"rollout: {describe(record)}"
