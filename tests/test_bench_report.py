"""bench/report.py: what bench/bench_*.py write through bench/common.py becomes one table."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402
from common import Run, judge  # noqa: E402

NOTES = "## bench_validation\n\nHand-written notes | with a pipe, kept as they are.\n"
MARKED = f"# Benchmark results\n\nIntro.\n\n{report.START}\nold table\n{report.END}\n\n{NOTES}"


def write_results(folder: Path) -> None:
    """Two benchmarks' results as the scripts write them: a PASS and a MISS, one of each kind."""
    Run("validation").write(
        [
            judge("GX / numpy", value=0.5, baseline=0.25, unit="s", op="<=", limit=25),
            judge("fixed cost", value=120, baseline=30, unit="ms", op="<=", limit=100, of="value"),
        ],
        results=folder,
    )
    ingest = judge("ingest", value=300_000, baseline=1_000_000, unit="rows/s", op=">=", limit=0.5)
    latency = judge("p50", value=2.5, baseline=1.0, unit="ms", op="<=", limit=2, of="difference")
    Run("train").write([ingest, latency], results=folder)


def table_lines(text: str) -> list[str]:
    block = text.split(report.START)[1].split(report.END)[0]
    return [line for line in block.splitlines() if line.startswith("| ")]


def test_the_report_writes_each_goal_with_its_ratio_and_verdict(tmp_path: Path) -> None:
    write_results(tmp_path)
    out = tmp_path / "RESULTS.md"
    out.write_text(MARKED)
    report.write_report(results=tmp_path, out=out, names=["synthetic", "train", "validation"])
    lines = table_lines(out.read_text())
    assert "| validation | GX / numpy | 0.5 s | 0.25 s | 2x | <= 25x | PASS |" in lines
    assert "| validation | fixed cost | 120 ms | 30 ms | 4x | <= 100 ms | MISS |" in lines
    assert "| train | ingest | 300,000 rows/s | 1,000,000 rows/s | 0.3x | >= 0.5x | MISS |" in lines
    assert "| train | p50 | 2.5 ms | 1 ms | 2.5x | <= +2 ms | PASS |" in lines


def test_a_benchmark_without_results_says_not_run(tmp_path: Path) -> None:
    write_results(tmp_path)
    out = tmp_path / "RESULTS.md"
    report.write_report(results=tmp_path, out=out, names=["synthetic", "train", "validation"])
    lines = table_lines(out.read_text())
    assert "| synthetic | not run | | | | | |" in lines
    runs = [line for line in lines if line.count("|") == 6 and "`" in line]
    assert [line.split(" | ")[0] for line in runs] == ["| train", "| validation"]


def test_the_notes_outside_the_markers_stay_as_they_were(tmp_path: Path) -> None:
    write_results(tmp_path)
    out = tmp_path / "RESULTS.md"
    out.write_text(MARKED)
    for _ in range(2):
        report.write_report(results=tmp_path, out=out, names=["validation"])
    text = out.read_text()
    assert text.startswith("# Benchmark results\n\nIntro.\n\n" + report.START)
    assert text.endswith(report.END + "\n\n" + NOTES)
    assert "old table" not in text
    assert text.count(report.START) == 1


def test_a_page_without_markers_gets_the_table_before_its_first_section(tmp_path: Path) -> None:
    write_results(tmp_path)
    out = tmp_path / "RESULTS.md"
    out.write_text("# Benchmark results\n\nIntro.\n\n" + NOTES)
    report.write_report(results=tmp_path, out=out, names=["validation"])
    text = out.read_text()
    assert text.index("Intro.") < text.index(report.START) < text.index(NOTES)
    assert text.endswith(NOTES)


def test_a_malformed_results_file_is_named_in_one_line(tmp_path: Path) -> None:
    write_results(tmp_path)
    bad = tmp_path / "train.json"
    document = json.loads(bad.read_text())
    document["rows"][0]["verdict"] = "GOOD"
    bad.write_text(json.dumps(document))
    with pytest.raises(report.BadResults) as raised:
        report.write_report(results=tmp_path, out=tmp_path / "R.md", names=["train"])
    assert str(bad) in str(raised.value)
    assert "PASS nor MISS" in str(raised.value)

    bad.write_text("{not json")
    done = subprocess.run(
        [sys.executable, str(BENCH / "report.py"), "--results", str(tmp_path),
         "--out", str(tmp_path / "R.md")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert str(bad) in done.stderr
    assert not (tmp_path / "R.md").exists()
