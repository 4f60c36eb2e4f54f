"""What every benchmark under bench/ writes: one row per goal, in one shape, with its machine.

A bench/bench_<name>.py script starts a `Run`, judges each goal with `judge` and writes the rows
to bench/results/<name>.json with `Run.write`; bench/report.py turns those files into the table
at the top of bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

RESULTS = Path(__file__).resolve().parent / "results"

Op = Literal["<=", ">="]
Verdict = Literal["PASS", "MISS"]
Judged = Literal["ratio", "value", "difference"]  # what a goal holds to its limit


@dataclass(frozen=True)
class Row:
    """One goal of one benchmark: our figure, the baseline's from the same run, the verdict."""

    figure: str  # what was measured, as the table names it
    value: float  # driftloop's figure
    baseline: float | None  # the baseline's figure from the same run; None where there is none
    ratio: float | None  # value / baseline
    goal: str  # what was judged: "<= 25x" the ratio, "<= 100 ms" the value, "<= +2 ms" the gap
    verdict: Verdict
    unit: str  # of value and baseline

    def line(self) -> str:
        """The row as a script prints it."""
        base = "" if self.baseline is None else f" vs {number(self.baseline)} {self.unit}"
        ratio = "" if self.ratio is None else f" = {number(self.ratio)}x"
        return (
            f"{self.verdict}    {self.figure}: {number(self.value)} {self.unit}{base}{ratio} "
            f"(goal {self.goal})"
        )


def judge(
    figure: str,
    *,
    value: float,
    baseline: float | None,
    unit: str,
    op: Op,
    limit: float,
    of: Judged = "ratio",
) -> Row:
    """A row whose verdict holds `of` (value / baseline, the value, value - baseline) to `limit`."""
    ratio = value / baseline if baseline else None
    if of == "ratio":
        if ratio is None:
            raise ValueError(f"{figure}: a goal on the ratio needs a baseline")
        judged, shown = ratio, f"{limit:g}x"
    elif of == "value":
        judged, shown = value, f"{limit:g} {unit}"
    else:
        judged, shown = value - (baseline or 0.0), f"{limit:+g} {unit}".strip()
    met = judged <= limit if op == "<=" else judged >= limit
    return Row(figure, value, baseline, ratio, f"{op} {shown}", "PASS" if met else "MISS", unit)


def number(x: float) -> str:
    """Three significant digits, thousands written out (180,172 rather than 1.8e+05)."""
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def machine() -> dict[str, Any]:
    """The CPU model, cores and memory (from /proc where there is one), OS and Python."""
    cpu = _proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine()
    memory_kb = _proc_field("/proc/meminfo", "MemTotal")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(int(memory_kb.split()[0]) / 2**20, 1) if memory_kb else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def _proc_field(path: str, name: str) -> str | None:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    found = (line.split(":", 1)[1].strip() for line in lines if line.split(":")[0].strip() == name)
    return next(found, None)


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@dataclass(frozen=True)
class Run:
    """One run of a benchmark: its name, when it started and the machine's load then."""

    name: str  # results go to bench/results/<name>.json
    started: float = field(default_factory=time.time)
    load_before: tuple[float, float, float] = field(default_factory=os.getloadavg)

    def write(
        self,
        rows: list[Row],
        *,
        details: dict[str, Any] | None = None,
        echo: bool = False,
        results: Path = RESULTS,
    ) -> Path:
        """Write the rows, this run's machine and load, and the script's own figures (`details`);
        with `echo`, print the same JSON."""
        document = {
            "benchmark": self.name,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "started": _utc(self.started),
            "finished": _utc(time.time()),
            "machine": machine(),
            "load_before": list(self.load_before),
            "load_after": list(os.getloadavg()),
            "rows": [asdict(row) for row in rows],
            "details": details or {},
        }
        text = json.dumps(document, indent=1, default=str) + "\n"
        results.mkdir(parents=True, exist_ok=True)
        path = results / f"{self.name}.json"
        path.write_text(text)
        if echo:
            print(text, end="")
        return path
