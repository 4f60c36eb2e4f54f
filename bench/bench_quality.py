"""Model quality on any table: driftloop against scikit-learn on the same split, one line each.

    .venv/bin/python bench/bench_quality.py                 # every data set, 3 seeds (15-30 min)
    .venv/bin/python bench/bench_quality.py --data wine     # one data set
    .venv/bin/python bench/bench_quality.py --json          # the report as JSON on stdout
    .venv/bin/python bench/bench_quality.py --training min_steps=0 --label before

Each data set is cut once per seed with `tasks.data.split` (train / validation / holdout, the
project's own split). driftloop is the real `train_model` on a local Ray with 2 CPU workers
(early stopping, checkpoints and the temperature on the validation split), then its exported
model is measured on the holdout by `tasks.evaluate`'s metrics code. The baselines,
HistGradientBoosting and a scaled linear model (LogisticRegression or Ridge after a
StandardScaler; categories one-hot), fit the same training split and are measured on the same
holdout rows by the same code. The metric is ROC-AUC (binary), accuracy (multiclass) or RMSE
(regression); the line compares driftloop's median over the seeds with the better baseline's.

Goals (issue #13): ROC-AUC or accuracy >= 0.98x the better baseline, RMSE <= 1.05x; training time
on churn 200k no more than 2x the time recorded before the step budget (`--reference`, default
bench/results/quality_before.json, written by a run with `--label before`). Training time is the
wall time of `train_model` (Ray Train's fixed cost of about 12 s included), median of the seeds.
Results go to bench/results/quality.json (or quality_<label>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Row, Run, judge

from tasks.data import split
from tasks.evaluate import compute_metrics, predict_encoded
from tasks.model import load_model
from tasks.settings import DatasetConfig, Features, Settings, SplitConfig, TrainingConfig
from tasks.synthetic import CATEGORICAL_FEATURES, NUMERIC_FEATURES, generate
from tasks.train import train_model

RESULTS = Path(__file__).parent / "results"
SEEDS = (0, 1, 2)
PRIMARY = {"binary": "roc_auc", "multiclass": "accuracy", "regression": "rmse"}
GOAL = {"roc_auc": 0.98, "accuracy": 0.98, "rmse": 1.05}  # driftloop / better baseline
TIME_GOAL = 2.0  # churn 200k training time / the time before the step budget
TIMED = "churn_200k"


@dataclass(frozen=True)
class Table:
    name: str
    table: pa.Table
    target: str
    task: Literal["classification", "regression"]
    kind: str  # binary | multiclass | regression
    numeric: list[str]
    categorical: list[str]
    id: str | None = None


def _sklearn(
    loader: str, *, task: Literal["classification", "regression"]
) -> Callable[[int], Table]:
    def load(seed: int) -> Table:
        from sklearn import datasets

        frame = getattr(datasets, loader)(as_frame=True).frame
        frame.columns = [
            str(c).replace(" ", "_").replace("(", "").replace(")", "") for c in frame.columns
        ]
        target = frame.columns[-1]
        numeric = [c for c in frame.columns if c != target]
        table = pa.Table.from_pandas(frame, preserve_index=False)
        classes = len(set(frame[target])) if task == "classification" else 0
        kind = "regression" if not classes else "binary" if classes == 2 else "multiclass"
        name = loader.removeprefix("load_")
        return Table(name, table, target, task, kind, numeric, [])

    return load


def _churn(rows: int) -> Callable[[int], Table]:
    def load(seed: int) -> Table:
        table = generate(rows=rows, seed=seed).drop_columns(["event_time"])
        return Table(
            f"churn_{rows // 1000}k",
            table,
            "churned",
            "classification",
            "binary",
            list(NUMERIC_FEATURES),
            list(CATEGORICAL_FEATURES),
            id="customer_id",
        )

    return load


DATA: dict[str, Callable[[int], Table]] = {
    "breast_cancer": _sklearn("load_breast_cancer", task="classification"),
    "diabetes": _sklearn("load_diabetes", task="regression"),
    "wine": _sklearn("load_wine", task="classification"),
    "iris": _sklearn("load_iris", task="classification"),
    "digits": _sklearn("load_digits", task="classification"),
    "churn_10k": _churn(10_000),
    "churn_200k": _churn(200_000),
}


def settings(data: Table, *, home: Path, seed: int, training: dict[str, Any]) -> Settings:
    features = Features(numeric=data.numeric, categorical=data.categorical)
    return Settings(
        home=str(home),
        dataset=DatasetConfig(
            name=data.name,
            source="unused",
            target=data.target,
            task=data.task,
            features=features,
            id=data.id,
        ),
        split=SplitConfig(seed=seed),
        training=TrainingConfig(**{"use_gpu": False, "num_workers": 2, "seed": seed, **training}),
    )


# The arms ---------------------------------------------------------------------------------------


def driftloop_arm(data: Table, parts: Any, s: Settings, home: Path) -> dict[str, Any]:
    started = time.perf_counter()
    result = train_model(
        train=parts.train, validation=parts.validation, settings=s, storage_path=str(home / "ray")
    )
    seconds = time.perf_counter() - started
    predictor = load_model(result.model_dir)
    y, pred = predict_encoded(predictor, parts.holdout, target=data.target, task=data.task)
    out: dict[str, Any] = {
        "metrics": compute_metrics(y, pred, task=data.task),
        "seconds": seconds,
        "rounds": len(result.history),
        "steps": getattr(result.history[-1], "step", None) if result.history else None,
        "best_round": result.best_epoch,
        "stopped_early": result.stopped_early,
        "temperature": getattr(predictor, "temperature", None),
        "code_path": result.workers[0].code_path if result.workers else None,
    }
    if data.task == "classification" and hasattr(predictor, "uncalibrated"):
        raw = predict_encoded(
            predictor.uncalibrated, parts.holdout, target=data.target, task="classification"
        )[1]
        out["uncalibrated"] = compute_metrics(y, raw, task="classification")
    return out


def baseline_arms(data: Table, parts: Any, seed: int) -> dict[str, dict[str, Any]]:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    columns = [*data.numeric, *data.categorical]
    train, holdout = (
        parts.train.select(columns).to_pandas(),
        parts.holdout.select(columns).to_pandas(),
    )
    y_train = np.asarray(parts.train[data.target])
    y_holdout = np.asarray(parts.holdout[data.target])
    classification = data.task == "classification"
    if classification:  # class indices in sorted label order, as driftloop's predictor orders them
        labels = np.unique(y_train)
        y_train, y_holdout = np.searchsorted(labels, y_train), np.searchsorted(labels, y_holdout)
    cat = [len(data.numeric) + i for i in range(len(data.categorical))]
    hgb_prep = ColumnTransformer(
        [
            (
                "cat",
                OrdinalEncoder(
                    handle_unknown="use_encoded_value",
                    unknown_value=np.nan,
                    encoded_missing_value=np.nan,
                ),
                data.categorical,
            )
        ],
        remainder="passthrough",
    )
    # ColumnTransformer puts the encoded categoricals first
    cat_mask = [True] * len(cat) + [False] * len(data.numeric)
    hgb_model = (
        HistGradientBoostingClassifier if classification else HistGradientBoostingRegressor
    )(random_state=seed, categorical_features=cat_mask if cat else None)
    linear_prep = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), data.numeric),
            ("cat", OneHotEncoder(handle_unknown="ignore"), data.categorical),
        ]
    )
    linear_model = LogisticRegression(max_iter=5000) if classification else Ridge()
    arms = {
        "hist_gradient_boosting": Pipeline([("prep", hgb_prep), ("model", hgb_model)]),
        "linear": Pipeline([("prep", linear_prep), ("model", linear_model)]),
    }
    out = {}
    for name, pipeline in arms.items():
        started = time.perf_counter()
        pipeline.fit(train, y_train)
        seconds = time.perf_counter() - started
        pred = pipeline.predict_proba(holdout) if classification else pipeline.predict(holdout)
        out[name] = {
            "metrics": compute_metrics(
                y_holdout, np.asarray(pred, dtype=np.float64), task=data.task
            ),
            "seconds": seconds,
        }
    return out


# The bench --------------------------------------------------------------------------------------


def run_data(name: str, *, seeds: tuple[int, ...], training: dict[str, Any]) -> dict[str, Any]:
    runs = []
    for seed in seeds:
        data = DATA[name](seed)
        with tempfile.TemporaryDirectory(prefix=f"bench-quality-{name}-") as tmp:
            s = settings(data, home=Path(tmp), seed=seed, training=training)
            parts = split(data.table, dataset=s.dataset, config=s.split)
            run: dict[str, Any] = {
                "seed": seed,
                "rows": {
                    "train": parts.train.num_rows,
                    "validation": parts.validation.num_rows,
                    "holdout": parts.holdout.num_rows,
                },
                "driftloop": driftloop_arm(data, parts, s, Path(tmp)),
                **baseline_arms(data, parts, seed),
            }
        runs.append(run)
        ours = run["driftloop"]
        print(
            f"  {name} seed {seed}: driftloop {_short(ours['metrics'])} in {ours['seconds']:.1f} s "
            f"({ours['rounds']} rounds, steps {ours['steps']}, T {ours['temperature']}); "
            + "; ".join(
                f"{arm} {_short(run[arm]['metrics'])}"
                for arm in ("hist_gradient_boosting", "linear")
            ),
            flush=True,
        )
    return summarise(name, DATA[name](seeds[0]).kind, runs)


def _short(metrics: dict[str, float]) -> str:
    keys = [k for k in ("roc_auc", "accuracy", "log_loss", "ece", "rmse", "r2") if k in metrics]
    return " ".join(f"{k} {metrics[k]:.4f}" for k in keys)


def _median(runs: list[dict[str, Any]], arm: str, key: str) -> float:
    values = [r[arm]["metrics"][key] for r in runs]
    return float(statistics.median(values))


def summarise(name: str, kind: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    primary = PRIMARY[kind]
    higher = primary != "rmse"
    baselines = {arm: _median(runs, arm, primary) for arm in ("hist_gradient_boosting", "linear")}
    better = (max if higher else min)(baselines, key=baselines.__getitem__)
    summary: dict[str, Any] = {
        "data": name,
        "kind": kind,
        "metric": primary,
        "driftloop": _median(runs, "driftloop", primary),
        "baseline": better,
        "baseline_value": baselines[better],
        "baselines": baselines,
        "seconds_median": statistics.median(r["driftloop"]["seconds"] for r in runs),
        "runs": runs,
    }
    row = quality_row(summary)
    summary |= {"ratio": row.ratio, "goal": row.goal, "verdict": row.verdict}
    if kind != "regression":
        for key in ("log_loss", "ece"):
            summary[f"driftloop_{key}"] = _median(runs, "driftloop", key)
            summary[f"baseline_{key}"] = _median(runs, better, key)
    return summary


def quality_row(summary: dict[str, Any]) -> Row:
    """A data set's goal: driftloop's median metric against the better baseline's."""
    metric = summary["metric"]
    return judge(
        f"{summary['data']}: {metric}, driftloop vs {summary['baseline']}",
        value=summary["driftloop"],
        baseline=summary["baseline_value"],
        unit=metric,
        op="<=" if metric == "rmse" else ">=",
        limit=GOAL[metric],
    )


def _report(path: Path) -> dict[str, Any]:
    """The report inside a results file (files from before bench/common.py held it bare)."""
    document = json.loads(path.read_text())
    return dict(document.get("details", document))


def time_verdict(report: dict[str, Any], reference: Path) -> tuple[str | None, Row | None]:
    """The line on churn 200k's training time, and its goal's row where a reference run is."""
    now = next((d for d in report["data"] if d["data"] == TIMED), None)
    if now is None:
        return None, None
    if not reference.exists():
        return (
            f"REPORT  {TIMED} training time {now['seconds_median']:.1f} s (no reference run)",
            None,
        )
    before = next((d for d in _report(reference)["data"] if d["data"] == TIMED), None)
    if before is None:
        line = f"REPORT  {TIMED} training time {now['seconds_median']:.1f} s (not in {reference})"
        return line, None
    row = judge(
        f"{TIMED} training time vs before the step budget",
        value=now["seconds_median"],
        baseline=before["seconds_median"],
        unit="s",
        op="<=",
        limit=TIME_GOAL,
    )
    report["time_ratio"] = row.ratio
    return row.line(), row


def table_lines(report: dict[str, Any]) -> list[str]:
    head = (
        f"{'data':<14} {'metric':<9} {'driftloop':>9} {'better baseline':>30} {'ratio':>6} "
        f"{'goal':>8} {'train s':>8}  verdict"
    )
    lines = [head]
    for d in report["data"]:
        base = f"{d['baseline']} {d['baseline_value']:.4f}"
        lines.append(
            f"{d['data']:<14} {d['metric']:<9} {d['driftloop']:>9.4f} {base:>30} "
            f"{d['ratio']:>6.3f} {d['goal']:>8} {d['seconds_median']:>8.1f}  {d['verdict']}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", nargs="*", choices=list(DATA), default=list(DATA))
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="how many seeds (0, 1, ...)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--training",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="TrainingConfig overrides (JSON values), e.g. min_steps=0",
    )
    parser.add_argument("--label", default="", help="write results/quality_<label>.json")
    parser.add_argument("--reference", type=Path, default=RESULTS / "quality_before.json")
    parser.add_argument("--no-dashboard", action="store_true", help="Ray without ray[default]")
    args = parser.parse_args()
    training = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.training)}

    import ray

    started = Run(f"quality_{args.label}" if args.label else "quality")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    ray.init(
        address="local",
        num_cpus=max(4, os.cpu_count() or 0),
        log_to_driver=False,
        include_dashboard=not args.no_dashboard,
        dashboard_host="127.0.0.1",
    )
    report: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
        "training_overrides": training,
        "seeds": list(range(args.seeds)),
        "data": [],
    }
    for name in args.data:
        print(f"== {name}", flush=True)
        report["data"].append(run_data(name, seeds=tuple(range(args.seeds)), training=training))
    ray.shutdown()
    report["load_avg_end"] = os.getloadavg()
    out = RESULTS / f"{started.name}.json"
    if args.data != list(DATA) and out.exists():  # a partial run updates its data sets only
        old = _report(out)
        kept = [d for d in old.get("data", []) if d["data"] not in args.data]
        order = list(DATA)
        report["data"] = sorted(kept + report["data"], key=lambda d: order.index(d["data"]))
        report["merged_from"] = {"earlier": old.get("load_avg_start"), "now": args.data}
    line, time_row = time_verdict(report, args.reference) if not args.label else (None, None)
    report["table"] = table_lines(report) + ([line] if line else [])
    rows = [quality_row(d) for d in report["data"]] + ([time_row] if time_row else [])
    out = started.write(rows, details=report, echo=args.json)
    print("\n".join(report["table"]))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
