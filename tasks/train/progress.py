"""Training progress: epoch reports reaching the driver live, and the learning curve drawn.

The Train controller appends each registered report of rank 0 to a JSON-lines file
(`progress_callback`); `ProgressTail` follows that file in a driver thread and calls `on_epoch`
once per epoch while `fit()` runs. `learning_curve_markdown` draws the history for the Prefect UI.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.loop import EpochRecord

if TYPE_CHECKING:
    import ray.train

    from tasks.train.driver import TrainResult

__all__ = [
    "ProgressTail",
    "learning_curve_markdown",
    "learning_curve_svg",
    "progress_callback",
]

logger = logging.getLogger(__name__)
_EPOCH_FIELDS = [f.name for f in fields(EpochRecord)]


def progress_callback(path: str) -> ray.train.UserCallback:
    """A Ray Train callback that appends each registered report of rank 0 to a JSON-lines file.

    It runs in the Train controller, which Ray Train places on the driver's node, so `path` can
    be a local file the driver follows: no actor, no shared storage. The class is built here so
    that cloudpickle ships it by value: the controller need not import driftloop (or Prefect).
    """
    from ray.train import UserCallback

    class ProgressLog(UserCallback):
        def __init__(self, path: str) -> None:
            self.path = path

        def after_report(
            self,
            run_context: Any,
            metrics: list[dict[str, Any]],
            checkpoint: ray.train.Checkpoint | None,
        ) -> None:
            import contextlib
            import json

            line = json.dumps({**metrics[0], "checkpoint": checkpoint is not None})
            with contextlib.suppress(OSError), open(self.path, "a") as file:
                file.write(line + "\n")  # best effort: a log, not state

    return ProgressLog(path)


class ProgressTail:
    """Epoch reports from the Train controller to a callback in the driver.

    `callback` (for `RunConfig`) appends each registered report to a JSON-lines file in a local
    temporary folder; a driver thread follows it. Where the driver cannot see that file (Ray
    Client: the controller runs on the cluster), nothing arrives live and `catch_up` delivers
    the epochs from the final history instead, so `on_epoch` still sees every epoch once.
    """

    def __init__(self, on_epoch: Callable[[EpochRecord], None] | None) -> None:
        self._folder = tempfile.mkdtemp(prefix="driftloop-progress-")
        self.path = os.path.join(self._folder, "progress.jsonl")
        self.callback = progress_callback(self.path)
        self.registered: list[tuple[int, int]] = []
        self._on_epoch = on_epoch
        self._delivered: set[int] = set()
        self._offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="train-progress", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.wait(0.25):
            self._read()
        self._read()

    def _read(self) -> None:
        try:
            with open(self.path, "rb") as file:
                file.seek(self._offset)
                chunk = file.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written waits for the next read
        self._offset += len(complete)
        for line in complete.splitlines():
            report = json.loads(line)
            if report.get("checkpoint"):
                self.registered.append((report["resumed_from_epoch"], report["epoch"]))
            self._deliver(EpochRecord(**{k: report[k] for k in _EPOCH_FIELDS}))

    def _deliver(self, record: EpochRecord) -> None:
        if self._on_epoch is None or record.epoch in self._delivered:
            return
        self._delivered.add(record.epoch)
        try:
            self._on_epoch(record)
        except Exception:  # a logging hiccup must not end training
            logger.exception("progress callback failed")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        shutil.rmtree(self._folder, ignore_errors=True)

    def catch_up(self, history: list[EpochRecord]) -> None:
        """Deliver the epochs that did not arrive live (the controller ran out of sight)."""
        missed = [r for r in history if r.epoch not in self._delivered]
        if missed and self._on_epoch is not None:
            logger.info(
                "%d epoch(s) did not reach the driver live (the Train controller runs where "
                "this process cannot see its files); reporting them from the result",
                len(missed),
            )
        for record in missed:
            self._deliver(record)


# The learning curve -----------------------------------------------------------------------------


def learning_curve_markdown(result: TrainResult) -> str:
    """A small markdown report with the learning curve as an inline SVG image."""
    svg = learning_curve_svg(result.history)
    uri = "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()
    return (
        f"### Learning curve\n\n![learning curve]({uri})\n\n"
        f"Best {result.metric_name} **{result.best_metric:.4f}** at epoch {result.best_epoch}"
        f" of {len(result.history)}{' (stopped early)' if result.stopped_early else ''}.\n"
    )


def learning_curve_svg(history: list[EpochRecord], *, width: int = 480, height: int = 240) -> str:
    """Training (blue) and validation (orange) loss as SVG polylines; no plotting library."""
    pad = 32
    series = {
        "#1f77b4": [r.train_loss for r in history],
        "#ff7f0e": [r.val_loss for r in history],
    }
    values = [v for vs in series.values() for v in vs if np.isfinite(v)] or [0.0, 1.0]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    steps = max(len(history) - 1, 1)

    def point(i: int, v: float) -> str:
        x = pad + i * (width - 2 * pad) / steps
        y = height - pad - (v - low) * (height - 2 * pad) / span
        return f"{x:.1f},{y:.1f}"

    lines = [
        f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
        + " ".join(point(i, v) for i, v in enumerate(vs))
        + '"/>'
        for color, vs in series.items()
    ]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="{pad}" y="20" font-size="12" font-family="sans-serif">'
        f'loss per epoch: <tspan fill="#1f77b4">train</tspan>, '
        f'<tspan fill="#ff7f0e">validation</tspan> ({low:.3g} to {high:.3g})</text>'
        + "".join(lines)
        + "</svg>"
    )
