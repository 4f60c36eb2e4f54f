"""Write the table of every benchmark's last results at the top of bench/RESULTS.md.

    .venv/bin/python bench/report.py        # `make bench` runs it after the benchmarks

Reads bench/results/<name>.json for every bench/bench_<name>.py (one without results says "not
run") and rewrites only what lies between the two markers in RESULTS.md (placed before the first
section the first time); the hand-written notes outside them stay as they are. A results file
not in the shape bench/common.py writes stops it with one line naming the file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS, Row, number

BENCH = Path(__file__).resolve().parent
START, END = "<!-- bench:table:start -->", "<!-- bench:table:end -->"
RUN_KEYS = ("command", "started", "finished", "machine", "load_before", "load_after", "rows")


class BadResults(Exception):
    """A results file or RESULTS.md that this report cannot read; the message is one line."""


def benchmarks(folder: Path = BENCH) -> list[str]:
    """The benchmarks there are: one per bench/bench_<name>.py."""
    return sorted(path.stem.removeprefix("bench_") for path in folder.glob("bench_*.py"))


def load(path: Path) -> dict[str, Any] | None:
    """A results file with its rows as `Row`s, or None where the benchmark has not run."""
    if not path.exists():
        return None
    try:
        document = json.loads(path.read_text())
        missing = [key for key in RUN_KEYS if key not in document]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        document["rows"] = [Row(**row) for row in document["rows"]]
        wrong = [row.figure for row in document["rows"] if row.verdict not in ("PASS", "MISS")]
        if wrong:
            raise ValueError(f"verdict neither PASS nor MISS: {', '.join(wrong)}")
    except (ValueError, TypeError, KeyError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BadResults(f"{path}: not a benchmark results file ({reason})") from None
    return dict(document)


def table(results: dict[str, dict[str, Any] | None], *, now: float) -> str:
    """The block between the markers: one line per goal, then when and where each one ran."""
    written = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now))
    lines = [
        START,
        "## Last results of `make bench`",
        "",
        f"Written by `bench/report.py` on {written} from bench/results/: each benchmark's last",
        "run, ratios against the baseline measured in the same run. The next report rewrites what",
        "lies between the markers; notes go below them.",
        "",
        "| benchmark | figure | value | baseline | ratio | goal | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, found in results.items():
        rows = [] if found is None else [_row(name, row) for row in found["rows"]]
        empty = "not run" if found is None else "no goal measured in its last run"
        lines += rows or [f"| {name} | {empty} | | | | | |"]
    lines += [
        "",
        "| benchmark | ran (UTC) | command | machine | load average (1 min) before → after |",
        "|---|---|---|---|---|",
    ]
    for name, found in results.items():
        if found is not None:
            lines.append(_run(name, found))
    return "\n".join([*lines, END])


def _row(name: str, row: Row) -> str:
    baseline = "" if row.baseline is None else f"{number(row.baseline)} {row.unit}"
    ratio = "" if row.ratio is None else f"{number(row.ratio)}x"
    cells = [name, row.figure, f"{number(row.value)} {row.unit}", baseline, ratio, row.goal]
    return "| " + " | ".join(c.replace("|", "\\|") for c in [*cells, row.verdict]) + " |"


def _run(name: str, found: dict[str, Any]) -> str:
    started, finished, m = found["started"], found["finished"], found["machine"]
    when = f"{started[:10]} {started[11:16]}-{finished[11:16]}"
    where = f"{m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB"
    load = f"{found['load_before'][0]:.2f} → {found['load_after'][0]:.2f}"
    return f"| {name} | {when} | `{found['command']}` | {where} | {load} |"


def splice(text: str, block: str) -> str:
    """`text` with `block` between its markers, or before its first section where it has none."""
    if (START in text) != (END in text):
        raise BadResults(f"one of {START} and {END} is missing: put both back or neither")
    if START in text:
        head, rest = text.split(START, 1)
        return head + block + rest.split(END, 1)[1]
    at = text.find("\n## ")
    if at < 0:
        return text.rstrip("\n") + "\n\n" + block + "\n"
    return text[: at + 1] + block + "\n\n" + text[at + 1 :]


def write_report(
    *, results: Path, out: Path, names: list[str], now: float | None = None
) -> dict[str, dict[str, Any] | None]:
    """Read each benchmark's results and write the table into `out`; returns what it read."""
    found = {name: load(results / f"{name}.json") for name in names}
    text = out.read_text() if out.exists() else "# Benchmark results\n"
    out.write_text(splice(text, table(found, now=time.time() if now is None else now)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of <name>.json")
    parser.add_argument("--out", type=Path, default=BENCH / "RESULTS.md")
    args = parser.parse_args()
    try:
        found = write_report(results=args.results, out=args.out, names=benchmarks())
    except BadResults as error:
        sys.exit(f"bench/report.py: {error}")
    ran = [name for name, results in found.items() if results is not None]
    print(f"{args.out}: the table of {', '.join(ran) or 'no benchmark'} ({len(found)} in all)")


if __name__ == "__main__":
    main()
