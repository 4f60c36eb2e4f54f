"""Benchmark: a monitoring pass over a large window vs a numpy PSI/KS pass over the same data.

    .venv/bin/python bench/bench_monitor.py                  # 1,000,000 rows x 20 features
    .venv/bin/python bench/bench_monitor.py --rows 200000 --repeats 1 --scenarios clean

The window is the prediction log as Serve writes it (20 files, the champion's outputs beside the
features), under a temporary home with a registered champion whose reference is a 20,000-row
training sample. The driftloop arm is the pass without Prefect around it: read the window (only
the needed columns), sample it, the champion's outputs, Evidently (DataDriftPreset + the
prediction's ValueDrift), the validation suite on the sample, CBPE, the governor, the HTML and
JSON reports. The numpy arm reads the same columns and computes PSI (10 reference-quantile bins)
and the KS statistic for every feature over the WHOLE window. Goals (issue #11): driftloop /
numpy <= 5x (medians of `--repeats` after a warm-up), peak memory of a pass <= 2x the window's
Arrow size (a fresh process, RSS), and, for every generator scenario, the same verdicts (the
drifted features, the window's drift) as Evidently on the full window with the same tests.
Writes bench/results/monitor.json (`--json` prints it too); prints PASS or MISS per goal.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from common import Row, Run, judge

from tasks import data, files, registry, synthetic, traffic
from tasks import model as m
from tasks.monitor import checks, governor, reports, requests
from tasks.monitor.drift import detect_drift
from tasks.monitor.window import Window, logged_rows, read_window
from tasks.settings import DatasetConfig, Features, MonitoringConfig, Settings, TrainingConfig

EXTRA = 9  # the generator's 11 features and 9 more numeric ones make 20
FEATURES = Features(
    numeric=[*synthetic.NUMERIC_FEATURES, *(f"extra_{i}" for i in range(EXTRA))],
    categorical=list(synthetic.CATEGORICAL_FEATURES),
)
TARGET, FILES = "churned", 20
NUMBERS = ("integer", "float")
NOW = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
RATIO_GOAL, MEMORY_GOAL = 5.0, 2.0


def make_table(rows: int, *, seed: int, scenario: str = "clean") -> pa.Table:
    table = synthetic.generate(rows=rows, seed=seed, scenario=scenario)
    rng = np.random.default_rng(seed + 1000)
    for i in range(EXTRA):
        table = table.append_column(f"extra_{i}", pa.array(rng.normal(i, 1 + i, rows)))
    return table


def settings_for(home: Path) -> Settings:
    dataset = DatasetConfig(name="churn", source="unused", target=TARGET, features=FEATURES)
    return Settings(home=str(home), dataset=dataset)


def make_champion(home: Path, reference: pa.Table) -> m.Predictor:
    """A champion (an untrained MLP: the pass costs the same) with its training sample."""
    pre = m.Preprocessor.fit(reference, features=FEATURES, target=TARGET, task="classification")
    spec = m.ModelSpec.build(pre, TrainingConfig(hidden_layers=[32, 16]))
    torch.manual_seed(0)
    predictor = m.Predictor(model=m.TabularMLP(spec), spec=spec, preprocessor=pre)
    with tempfile.TemporaryDirectory() as tmp:
        saved = m.save_model(Path(tmp) / "m", model=predictor.model, spec=spec, preprocessor=pre)
        version = registry.register(
            root=str(home),
            model="churn",
            model_dir=str(saved),
            metadata={"metrics": {"roc_auc": 0.85, "accuracy": 0.8}},
            extra_files={files.REFERENCE: data.sample_parquet(reference, rows=data.REFERENCE_ROWS)},
        )
    registry.set_alias(
        root=str(home), model="churn", alias="champion", version=version, reason="bench"
    )
    return predictor


def write_window(home: Path, predictor: m.Predictor, table: pa.Table, *, clean: pa.Table) -> None:
    """`table` as the prediction log, in FILES files; the outputs are scored on `clean` (a broken
    feed's rows are what Serve would have scored before the break)."""
    features = table.drop_columns(
        [c for c in (TARGET, "customer_id", "event_time") if c in table.column_names]
    )
    outputs = predictor.predict(clean.select(FEATURES.all))
    step = -(-table.num_rows // FILES)
    for k, start in enumerate(range(0, table.num_rows, step)):
        part = features.slice(start, step)
        ids = [f"r{start + i:010d}" for i in range(part.num_rows)]
        rows = logged_rows(
            features=part,
            outputs=outputs[start : start + part.num_rows],
            classes=predictor.classes,
            version=1,
            at=NOW - timedelta(minutes=FILES - k),
            request_ids=ids,
        )
        traffic.append(home=str(home), model="churn", kind="predictions", rows=rows)


def home_with(
    scenario: str, *, rows: int, root: Path, reference: pa.Table, name: str | None = None
) -> Path:
    home = root / (name or scenario)
    predictor = make_champion(home, reference)
    clean = make_table(rows, seed=7)
    window = clean if scenario == "clean" else make_table(rows, seed=7, scenario=scenario)
    write_window(home, predictor, window, clean=clean)
    return home


# The two arms -----------------------------------------------------------------------------------


def driftloop_pass(home: Path) -> tuple[reports.MonitorResult, Window]:
    """One monitoring pass, as flows/monitoring.py runs it, without Prefect around it."""
    settings = settings_for(home)
    champion = checks.load_champion(settings)
    window = read_window(
        home=str(home),
        model="churn",
        features=champion.features.all,
        target=TARGET,
        config=settings.monitoring,
        now=NOW + timedelta(minutes=1),
    )
    current = checks.with_outputs(window.table, champion.outputs(window.table))
    reference = checks.with_outputs(champion.reference, champion.outputs(champion.reference))
    drift = detect_drift(
        current,
        reference,
        numeric=FEATURES.numeric,
        categorical=FEATURES.categorical,
        predictions=champion.output_columns,
        config=settings.monitoring,
    )
    report = checks.check_data(window, champion=champion, settings=settings)
    quality = checks.judge_quality(window, champion=champion, settings=settings)
    signals = governor.Signals(
        window_end=window.end,
        rows=window.rows,
        champion=champion.version,
        drift=drift.drift,
        drifted_features=drift.drifted_features,
        drift_share=drift.share,
        prediction_drift=drift.prediction_drift,
        quality=quality,
        data_problems=report.problems,
    )
    decision, _ = governor.decide(
        signals, state=requests.State(), config=settings.monitoring, now=NOW
    )
    result = reports.MonitorResult(
        model="churn",
        champion=champion.version,
        window=window,
        drift=drift,
        quality=quality,
        data_quality=report,
        decision=decision,
    )
    reports.write_reports(result, home=str(home))
    return result, window


def numpy_pass(home: Path) -> dict[str, tuple[float, float]]:
    """PSI and the KS statistic of every feature over the whole window, against the reference."""
    ref = data.read_table(registry.champion(root=str(home), model="churn").file(files.REFERENCE))  # type: ignore[union-attr]
    window = traffic.read(home=str(home), model="churn", kind="predictions", columns=FEATURES.all)
    assert window is not None
    out = {}
    for name in FEATURES.numeric:
        if name in window.column_names and data.column_kind(window[name].type) in NUMBERS:
            out[name] = _numeric(_values(window[name]), _values(ref[name]))
    for name in FEATURES.categorical:
        if name in window.column_names:
            out[name] = (_categorical_psi(window[name], ref[name]), float("nan"))
    return out


def _values(column: pa.ChunkedArray) -> np.ndarray:
    values = pc.cast(column.drop_null(), pa.float64()).to_numpy()
    return values[np.isfinite(values)]


def _numeric(cur: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, 11)))
    p = np.histogram(np.clip(ref, edges[0], edges[-1]), bins=edges)[0] / max(len(ref), 1)
    q = np.histogram(np.clip(cur, edges[0], edges[-1]), bins=edges)[0] / max(len(cur), 1)
    psi = float(np.sum((q - p) * np.log(np.maximum(q, 1e-6) / np.maximum(p, 1e-6))))
    a, b = np.sort(ref), np.sort(cur)
    grid = np.concatenate([a, b])
    ks = np.abs(
        np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)
    )
    return psi, float(ks.max())


def _categorical_psi(cur: pa.ChunkedArray, ref: pa.ChunkedArray) -> float:
    def shares(column: pa.ChunkedArray) -> dict[Any, float]:
        counts = pc.value_counts(column.drop_null())
        total = max(sum(c.as_py() for c in counts.field("counts")), 1)
        return {
            v.as_py(): c.as_py() / total
            for v, c in zip(counts.field("values"), counts.field("counts"), strict=True)
        }

    p, q = shares(ref), shares(cur)
    keys = set(p) | set(q)
    return float(
        sum(
            (q.get(k, 0) - p.get(k, 0)) * np.log(max(q.get(k, 0), 1e-6) / max(p.get(k, 0), 1e-6))
            for k in keys
        )
    )


def timed(fn: Any, *args: Any) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


# Memory: one pass in a fresh process -------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_probe(home: Path, warm: Path) -> dict[str, float]:
    driftloop_pass(warm)  # imports, GX's context, Evidently's registries: not the window's cost
    window = traffic.read(
        home=str(home),
        model="churn",
        kind="predictions",
        columns=[traffic.REQUEST_ID, traffic.PREDICTED_AT, "model_version", *FEATURES.all],
    )
    assert window is not None
    window_bytes = window.nbytes
    del window
    before = rss_bytes()
    driftloop_pass(home)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "window_bytes": window_bytes,
        "rss_before": before,
        "peak_rss": peak,
        "peak_over_window": (peak - before) / window_bytes,
    }


def measure_memory(home: Path, warm: Path) -> dict[str, float]:
    code = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "from pathlib import Path; import bench_monitor as b; "
        f"print(json.dumps(b.memory_probe(Path({str(home)!r}), Path({str(warm)!r}))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# Verdicts: the sampled pass vs Evidently on the full window --------------------------------------


def full_window_verdict(home: Path) -> tuple[list[str], bool]:
    settings = settings_for(home)
    champion = checks.load_champion(
        settings.model_copy(update={"monitoring": MonitoringConfig(sample_rows=10**9)})
    )
    whole = MonitoringConfig(sample_rows=10**9)
    window = read_window(
        home=str(home),
        model="churn",
        features=FEATURES.all,
        target=TARGET,
        config=whole,
        now=NOW + timedelta(minutes=1),
    )
    found = detect_drift(
        window.table,
        champion.reference,
        numeric=FEATURES.numeric,
        categorical=FEATURES.categorical,
        predictions=[],
        config=whole,
    )
    return found.drifted_features, found.drift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scenarios", nargs="*", default=list(synthetic.SCENARIOS))
    parser.add_argument("--no-verdicts", action="store_true", help="skip Evidently on 1M rows")
    parser.add_argument("--json", action="store_true", help="print the results file's JSON")
    args = parser.parse_args()
    bench_run = Run("monitor")
    root = Path(tempfile.mkdtemp(prefix="bench-monitor-"))
    reference = make_table(data.REFERENCE_ROWS, seed=1)
    print(
        f"{args.rows:,} rows x {len(FEATURES.all)} features; reference "
        f"{reference.num_rows:,} rows; sample {MonitoringConfig().sample_rows:,}"
    )

    # Speed: both arms on the clean window, warm ------------------------------------------------
    clean = home_with("clean", rows=args.rows, root=root, reference=reference)
    warm = home_with("clean", rows=20_000, root=root, reference=reference, name="warm")
    driftloop_pass(warm)
    numpy_pass(warm)
    ours = [timed(driftloop_pass, clean) for _ in range(args.repeats)]
    base = [timed(numpy_pass, clean) for _ in range(args.repeats)]
    ours_s, base_s = statistics.median(ours), statistics.median(base)
    speed = judge(
        f"monitoring pass / numpy PSI+KS, {args.rows:,} rows x {len(FEATURES.all)}",
        value=ours_s,
        baseline=base_s,
        unit="s",
        op="<=",
        limit=RATIO_GOAL,
    )
    print(
        f"pass: driftloop {ours_s:.2f} s   numpy PSI/KS {base_s:.2f} s   "
        f"ratio {ours_s / base_s:.1f}x   goal {speed.goal}: {speed.verdict}"
    )
    stages = stage_times(clean)
    print("  stages: " + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()))

    # Memory: a fresh process ---------------------------------------------------------------------
    memory = measure_memory(clean, warm)
    window_mib = memory["window_bytes"] / 2**20
    pass_mib = (memory["peak_rss"] - memory["rss_before"]) / 2**20
    peak = judge(
        "peak memory of a pass / the window's Arrow size",
        value=pass_mib,
        baseline=window_mib,
        unit="MiB",
        op="<=",
        limit=MEMORY_GOAL,
    )
    print(
        f"memory: window {window_mib:.0f} MiB, pass peak +{pass_mib:.0f} MiB = "
        f"{memory['peak_over_window']:.2f}x   goal {peak.goal}: {peak.verdict}"
    )
    rows: list[Row] = [speed, peak]

    # Verdicts per scenario -----------------------------------------------------------------------
    verdicts = {}
    for scenario in args.scenarios:
        home = (
            clean
            if scenario == "clean"
            else home_with(scenario, rows=args.rows, root=root, reference=reference)
        )
        result, _ = driftloop_pass(home)
        entry: dict[str, Any] = {
            "drifted": result.drift.drifted_features,
            "drift": result.drift.drift,
            "problems": result.data_problems,
            "decision": result.decision.action,
        }
        if not args.no_verdicts:
            started = time.perf_counter()
            full, full_drift = full_window_verdict(home)
            entry |= {
                "full_drifted": full,
                "full_drift": full_drift,
                "full_seconds": time.perf_counter() - started,
                "same": full == result.drift.drifted_features and full_drift == result.drift.drift,
            }
        verdicts[scenario] = entry
        same = entry.get("same")
        print(
            f"  {scenario:18s} drift {result.drift.drift!s:5s} "
            f"{','.join(result.drift.drifted_features) or '-':60s} "
            f"data: {','.join(result.data_problems) or 'ok':18s} "
            + (
                ""
                if same is None
                else f"full window: {'SAME' if same else 'DIFFERENT ' + str(entry['full_drifted'])}"
            )
        )
    if not args.no_verdicts:
        agreement = judge(
            "scenarios whose verdicts match Evidently on the full window",
            value=sum(v["same"] for v in verdicts.values()),
            baseline=len(verdicts),
            unit="scenarios",
            op=">=",
            limit=1.0,
        )
        print(
            f"verdicts: the same as Evidently on the full window in {agreement.value:g} of "
            f"{len(verdicts)} scenarios: {agreement.verdict}"
        )
        rows.append(agreement)
    details = {
        "rows": args.rows,
        "features": len(FEATURES.all),
        "sample_rows": MonitoringConfig().sample_rows,
        "driftloop_s": ours,
        "numpy_s": base,
        "stages_s": stages,
        "memory": memory,
        "verdicts": verdicts,
    }
    print(f"wrote {bench_run.write(rows, details=details, echo=args.json)}")


def stage_times(home: Path) -> dict[str, float]:
    """Where one pass's time goes."""
    settings = settings_for(home)
    out: dict[str, float] = {}
    started = time.perf_counter()
    champion = checks.load_champion(settings)
    out["champion"] = time.perf_counter() - started
    started = time.perf_counter()
    window = read_window(
        home=str(home),
        model="churn",
        features=champion.features.all,
        target=TARGET,
        config=settings.monitoring,
        now=NOW + timedelta(minutes=1),
    )
    out["read+sample"] = time.perf_counter() - started
    started = time.perf_counter()
    current = checks.with_outputs(window.table, champion.outputs(window.table))
    reference = checks.with_outputs(champion.reference, champion.outputs(champion.reference))
    out["outputs"] = time.perf_counter() - started
    started = time.perf_counter()
    drift = detect_drift(
        current,
        reference,
        numeric=FEATURES.numeric,
        categorical=FEATURES.categorical,
        predictions=champion.output_columns,
        config=settings.monitoring,
    )
    out["evidently"] = time.perf_counter() - started
    started = time.perf_counter()
    checks.check_data(window, champion=champion, settings=settings)
    out["data quality"] = time.perf_counter() - started
    started = time.perf_counter()
    drift.snapshot.get_html_str(as_iframe=False)
    out["html"] = time.perf_counter() - started
    return out


if __name__ == "__main__":
    main()
