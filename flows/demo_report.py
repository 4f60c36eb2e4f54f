"""The demo's record (where things are, each stage's outcome and time) and how it is reported:
the tables and lines `driftloop demo` ends with, and the dict `--json` prints."""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tasks import registry
from tasks.errors import DriftloopError
from tasks.serve import Traffic
from tasks.settings import Settings

SHOWN_METRICS = ("roc_auc", "accuracy", "rmse", "mae", "r2")


class DemoFailed(DriftloopError):
    """The loop did not close: the stage and the reason, in one line."""


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    outcome: str = ""


@dataclass
class Demo:
    """The story's state: where things are, what each stage found and how long it took."""

    config: Path
    settings: Settings
    console: Console
    stages: list[Stage] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)
    traffic: Traffic = field(default_factory=Traffic)
    facts: dict[str, Any] = field(default_factory=dict)
    loop: dict[str, float] = field(default_factory=dict)  # drifted traffic logged -> champion
    predicted: int = 0  # rows answered so far: what the prediction log must hold before a pass

    @property
    def home(self) -> str:
        return str(self.settings.home)

    @property
    def model(self) -> str:
        return self.settings.dataset.name

    @property
    def logs(self) -> Path:
        return Path(self.home).resolve() / "logs"

    @contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        """One line when the stage ends: a tick, its outcome and how long it took."""
        found = Stage(name)
        started = time.monotonic()
        self.console.print(f"[bold]▶ {name}[/]")
        try:
            yield found
        finally:
            found.seconds = time.monotonic() - started
            self.stages.append(found)
        self.console.print(f"  [green]✓[/] {found.outcome} [dim]({found.seconds:.1f} s)[/]")


def summarize(demo: Demo) -> None:
    stages = Table(title="driftloop demo", title_justify="left")
    for column in ("stage", "took", "outcome"):
        stages.add_column(column, overflow="fold")
    for s in demo.stages:
        stages.add_row(s.name.split(":")[0], f"{s.seconds:.1f} s", s.outcome)
    stages.add_row("total", f"{demo.facts['total_s']:.1f} s", "", style="bold")
    demo.console.print(stages)

    versions = Table(title=f"{demo.model}: versions", title_justify="left")
    for column in ("version", "metrics", "gate", "alias", "started by"):
        versions.add_column(column)
    aliases = registry.aliases(root=demo.home, model=demo.model)
    for v in registry.list_versions(root=demo.home, model=demo.model):
        meta = registry.get_version(root=demo.home, model=demo.model, version=v)
        trigger = meta.get("trigger") or {}
        versions.add_row(
            f"v{v}",
            metric(demo, v),
            "passed" if (meta.get("gate") or {}).get("passed") else "failed",
            ", ".join(sorted(a for a, n in aliases.items() if n == v)),
            "drift monitor" if trigger.get("request_id") else "training",
        )
    demo.console.print(versions)
    drifted = demo.facts.get("drifted", {})
    demo.console.print(f"drift found: {verdict(drifted)}; reason: {drifted.get('reason', '-')}")
    new_world = demo.facts.get("new_world")
    if new_world:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in new_world.items() if k.startswith("v"))
        demo.console.print(
            f"on {new_world['rows']:,} fresh rows of the new world that no version saw, "
            f"{new_world['metric']}: {scores} (the source file never changed: the labelled "
            "traffic taught it)"
        )
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in demo.loop.items())
    demo.console.print(f"from drifted traffic logged to the champion serving: "
                       f"{sum(demo.loop.values()):.0f} s ({steps})")  # fmt: skip
    for name, url in demo.urls.items():
        demo.console.print(f"{name + ':':<15} {url}")
    demo.console.print(f"{'logs:':<15} {demo.logs}/ (Prefect, Ray, the runner: its flow runs)")
    demo.console.print("The stack keeps running for the UI; `driftloop down` stops it.")


def summary(demo: Demo) -> dict[str, Any]:
    return {
        "stages": [
            {"stage": s.name, "seconds": round(s.seconds, 1), "outcome": s.outcome}
            for s in demo.stages
        ],
        "urls": demo.urls,
        "logs": str(demo.logs),
        "traffic": {"answered": demo.traffic.answered, "failed": demo.traffic.failed},
        **{k: v for k, v in demo.facts.items() if k not in ("clean", "drifted")},
        "monitor": {k: brief(demo.facts.get(k)) for k in ("clean", "drifted")},
        "loop_s": {k: round(v, 1) for k, v in demo.loop.items()},
    }


def metric(demo: Demo, version: int) -> str:
    """The metrics a person looks at first (ranking, then hits or errors), on the rows that
    judged the version (the holdout, or recent labelled traffic)."""
    meta = registry.get_version(root=demo.home, model=demo.model, version=version)
    metrics = meta["metrics"]
    shown = [k for k in SHOWN_METRICS if isinstance(metrics.get(k), int | float)][:2]
    text = ", ".join(f"{k} {metrics[k]:.3f}" for k in shown) or "-"
    on = (meta.get("judged_on") or {}).get("on", "holdout")
    return text + (" on labelled traffic" if on != "holdout" else "")


def verdict(found: dict[str, Any]) -> str:
    """A pass at a glance: drift, quality (measured or estimated) against the holdout, decision."""
    if not found:
        return "-"
    drifted = found.get("drifted_features") or []
    drift = f"drift on {', '.join(drifted)}" if drifted else "no drift"
    q = found.get("quality") or {}
    quality = (
        f"{q['metric']} {q['value']:.3f} {q['source']} vs {q['baseline']:.3f} on the holdout"
        if q.get("value") is not None and q.get("baseline") is not None
        else q.get("summary", "quality unknown")
    )
    return f"{drift}; {quality}; decision: {found['decision']}"


def brief(found: dict[str, Any] | None) -> dict[str, Any] | None:
    keys = ("drift", "drifted_features", "decision", "reason", "report")
    return None if found is None else {k: found.get(k) for k in keys}
