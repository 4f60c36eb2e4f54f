"""Synthetic customer-churn data with named drift scenarios, for demos, tests and benchmarks.

    write_parquet(generate(rows=100_000, seed=0), "data/churn.parquet")

One seeded, vectorised generator produces both the clean "training" data and every "production"
batch, so a scenario changes exactly what it names and nothing else. Each column draws from its own
random stream: with the same seed, `concept_drift` returns the very same features as `clean` with
a different target, and `covariate_shift` leaves every column it does not touch (or derive from)
as it was.

Scenarios (`severity` scales each one; 1.0 is the magnitude given here):
- `clean`: nothing changes; a new seed is a fresh sample of the same distributions.
- `covariate_shift`: P(x) of `features` moves where they are drawn, so what derives from them
  follows; P(y|x) is kept (the target is the same function of the shifted features). Numeric:
  +1 reference std per unit (log-mean for usage, Poisson rate for calls); categorical: half the
  mass moves to the reversed category order.
- `prior_shift`: P(y) changes, P(x|y) is kept: clean rows are rejection-sampled with an acceptance
  that depends on the label only. Classification: positive odds x 4**severity (20% -> 50%).
  Regression: acceptance sigmoid(2 * severity * z(y)), which raises the mean by about 0.5 std.
- `concept_drift`: P(y|x) changes (coefficients move, main effects flip sign, linearly in
  severity); the features are identical to `clean` with the same seed.
- `unseen_categories`: 10% of rows per column in `features` get a value from `UNSEEN_VALUES`.
- `missing_spike`: 40% of rows per column in `features` are null.
- `schema_break`: `kind` drops `features[0]`, renames it `<name>_v2`, or retypes a numeric
  column as strings; severity is unused.
"""

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

Task = Literal["classification", "regression"]

SCENARIOS: tuple[str, ...] = (
    "clean",
    "covariate_shift",
    "prior_shift",
    "concept_drift",
    "unseen_categories",
    "missing_spike",
    "schema_break",
)
SCHEMA_BREAKS: tuple[str, ...] = ("drop", "rename", "retype")
TARGETS: dict[str, str] = {"classification": "churned", "regression": "next_month_spend"}

CATEGORIES: dict[str, tuple[str, ...]] = {
    "contract": ("month-to-month", "one-year", "two-year"),
    "payment_method": ("electronic_check", "mailed_check", "bank_transfer", "credit_card"),
    "region": ("north", "south", "east", "west", "central"),
    "plan": ("basic", "standard", "premium"),
}
NUMERIC_FEATURES: tuple[str, ...] = (
    "tenure_months",
    "monthly_charges",
    "total_charges",
    "age",
    "support_calls",
    "data_usage_gb",
    "discount_pct",
)
CATEGORICAL_FEATURES: tuple[str, ...] = tuple(CATEGORIES)
FEATURES: tuple[str, ...] = NUMERIC_FEATURES + CATEGORICAL_FEATURES
# Values the clean data never contains, used by `unseen_categories`.
UNSEEN_VALUES: dict[str, str] = {
    "contract": "weekly",
    "payment_method": "crypto",
    "region": "offshore",
    "plan": "enterprise",
}
# Share of nulls in a clean batch (missing completely at random, after the target is drawn).
NULL_SHARES: dict[str, float] = {
    "data_usage_gb": 0.03,
    "payment_method": 0.02,
    "discount_pct": 0.05,
}

DEFAULT_START = datetime(2026, 1, 1, tzinfo=timezone.utc)
DEFAULT_FEATURES: dict[str, tuple[str, ...]] = {
    "covariate_shift": ("tenure_months", "monthly_charges"),
    "unseen_categories": ("contract", "payment_method"),
    "missing_spike": ("data_usage_gb", "payment_method", "monthly_charges"),
    "schema_break": ("monthly_charges",),
}

# One unit of covariate shift per numeric feature: about one reference standard deviation, applied
# where the feature is drawn so that what derives from it (total charges, support calls) follows.
_SHIFT_UNITS: dict[str, float] = {
    "tenure_months": 20.0,
    "monthly_charges": 29.0,
    "total_charges": 1_300.0,
    "age": 14.0,
    "support_calls": 1.0,  # added to the Poisson rate
    "data_usage_gb": 1.0,  # added to the log-mean
    "discount_pct": 6.0,
}
_UNSEEN_SHARE, _MISSING_SHARE = 0.10, 0.40
_MAX_ROWS = 100_000_000
# Category probabilities; payment method depends on the contract (one row per contract).
_CATEGORY_PROBS: dict[str, list[list[float]]] = {
    "contract": [[0.55, 0.24, 0.21]],
    "plan": [[0.40, 0.38, 0.22]],
    "region": [[0.22, 0.24, 0.18, 0.21, 0.15]],
    "payment_method": [
        [0.45, 0.20, 0.17, 0.18],
        [0.20, 0.20, 0.30, 0.30],
        [0.12, 0.18, 0.35, 0.35],
    ],
}
_ID_MODULUS = 999_999_937  # a prime: i -> (a*i + b) mod p is a bijection, so ids never collide
_STREAMS = (
    *FEATURES,
    "target",
    "customer_id",
    "event_time",
    "scenario",
    *(f"null:{name}" for name in FEATURES),
)

# Logistic churn model: terms are built in `_churn_logit`; the drifted set flips the main effects
# (month-to-month customers now stay, long-tenure ones leave) at about the same positive rate.
_CHURN: dict[str, float] = {
    "bias": -2.40,
    "month_to_month": 1.6,
    "tenure": -0.045,
    "tenure_x_premium": -0.02,
    "support_calls": 0.30,
    "calls_x_month_to_month": 0.25,
    "monthly_charges": 0.018,
    "discount": -0.05,
    "electronic_check": 0.45,
    "age": -0.01,
}
_CHURN_DRIFTED: dict[str, float] = {
    "bias": -1.47,
    "month_to_month": -1.2,
    "tenure": 0.02,
    "tenure_x_premium": 0.02,
    "support_calls": -0.35,
    "calls_x_month_to_month": 0.0,
    "monthly_charges": -0.02,
    "discount": 0.03,
    "electronic_check": -0.40,
    "age": 0.02,
}
# Spend model: (discounted charges + overage + add-ons) damped by churn risk, plus noise.
_SPEND: dict[str, float] = {"charges": 1.0, "overage": 2.0, "calls": 3.0, "risk": 0.30}
_SPEND_DRIFTED: dict[str, float] = {"charges": 0.7, "overage": 0.3, "calls": -2.5, "risk": -0.30}
_SPEND_NOISE = 4.0
_OVERAGE_ALLOWANCE_GB = np.array([5.0, 20.0, 50.0])  # by plan


@dataclass(frozen=True)
class _Spec:
    """What the clean generator is asked to change: covariate shift and target coefficients."""

    shift: Mapping[str, float] = field(default_factory=dict)
    churn: Mapping[str, float] = field(default_factory=lambda: dict(_CHURN))
    spend: Mapping[str, float] = field(default_factory=lambda: dict(_SPEND))


def generate(
    *,
    rows: int,
    seed: int = 0,
    task: Task = "classification",
    scenario: str = "clean",
    start: datetime | None = None,
    window_days: float = 90.0,
    severity: float = 1.0,
    features: Sequence[str] | None = None,
    kind: str | None = None,
) -> pa.Table:
    """Generate a churn batch (`churned`) or a spend batch (`next_month_spend`) as a pyarrow Table.

    Args:
        rows: number of rows.
        seed: non-negative seed; the same arguments always give the same table.
        task: `classification` (target `churned`, int64 0/1, ~20% positives) or `regression`
            (target `next_month_spend`, float64).
        scenario: one of `SCENARIOS` (see the module docstring).
        start: start of the `event_time` window (naive means UTC); default 2026-01-01 UTC.
        window_days: length of the `event_time` window.
        severity: strength of the scenario; 1.0 is the documented default magnitude.
        features: columns the scenario acts on (covariate_shift, unseen_categories,
            missing_spike, schema_break); defaults in `DEFAULT_FEATURES`.
        kind: `schema_break` only: `drop`, `rename` or `retype` (default `drop`).

    Raises:
        ValueError: an unknown scenario, task, kind or column, or arguments out of range.
    """
    _check_args(
        rows=rows,
        seed=seed,
        task=task,
        scenario=scenario,
        window_days=window_days,
        severity=severity,
        kind=kind,
    )
    cols = _scenario_columns(scenario, features, kind=kind)
    streams = _streams(seed)
    if scenario == "prior_shift":
        data = _label_shifted(rows=rows, seed=seed, task=task, severity=severity)
    else:
        data = _columns(rows=rows, streams=streams, task=task, spec=_spec(scenario, severity, cols))
        data["customer_id"] = _ids(streams["customer_id"], np.arange(rows))
    data["event_time"] = _event_times(streams["event_time"], rows, start=start, days=window_days)
    spike = dict.fromkeys(cols, _MISSING_SHARE * severity) if scenario == "missing_spike" else {}
    masks = _null_masks(streams, rows, spike=spike)
    dictionaries = {name: list(values) for name, values in CATEGORIES.items()}
    if scenario == "unseen_categories":
        _inject_unseen(
            data, dictionaries, streams["scenario"], cols, share=_UNSEEN_SHARE * severity
        )
    table = _to_table(data, masks, dictionaries, target=TARGETS[task])
    if scenario == "schema_break":
        table = _break_schema(table, column=cols[0], kind=kind or "drop")
    return table


def example_dataset_config(task: Task = "classification") -> dict[str, object]:
    """The `dataset:` block of a driftloop.yaml for this data; features are left to inference."""
    name = "churn" if task == "classification" else "spend"
    return {
        "name": name,
        "source": f"data/{name}.parquet",
        "target": TARGETS[task],
        "task": task,
        "id": "customer_id",
        "timestamp": "event_time",
        "slices": ["contract"],
    }


def write_parquet(table: pa.Table, path: str | os.PathLike[str]) -> Path:
    """Write `table` to a local Parquet file atomically: a temp file beside it, then a rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


# Argument checks


def _check_args(
    *,
    rows: int,
    seed: int,
    task: str,
    scenario: str,
    window_days: float,
    severity: float,
    kind: str | None,
) -> None:
    """Reject arguments that would otherwise give silently wrong data."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; allowed: {', '.join(SCENARIOS)}")
    if task not in TARGETS:
        raise ValueError(f"unknown task {task!r}; allowed: {', '.join(TARGETS)}")
    if not 0 <= rows <= _MAX_ROWS:
        raise ValueError(f"rows must be between 0 and {_MAX_ROWS}, got {rows}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if not window_days > 0:
        raise ValueError(f"window_days must be positive, got {window_days}")
    if not np.isfinite(severity):
        raise ValueError(f"severity must be finite, got {severity}")
    share = {"unseen_categories": _UNSEEN_SHARE, "missing_spike": _MISSING_SHARE}.get(scenario)
    if share is not None and not 0 <= share * severity <= 1:
        raise ValueError(
            f"{scenario}: severity {severity} gives a row share of {share * severity:g}"
        )
    if kind is not None and scenario != "schema_break":
        raise ValueError(f"kind applies to scenario 'schema_break' only, not {scenario!r}")
    if kind is not None and kind not in SCHEMA_BREAKS:
        raise ValueError(f"unknown schema_break kind {kind!r}; allowed: {', '.join(SCHEMA_BREAKS)}")


def _scenario_columns(
    scenario: str, features: Sequence[str] | None, *, kind: str | None
) -> tuple[str, ...]:
    """The columns a scenario acts on: the given ones, checked, or its defaults."""
    if scenario not in DEFAULT_FEATURES:
        if features is not None:
            raise ValueError(f"features do not apply to scenario {scenario!r}")
        return ()
    cols = DEFAULT_FEATURES[scenario] if features is None else tuple(features)
    allowed = CATEGORICAL_FEATURES if scenario == "unseen_categories" else FEATURES
    if scenario == "schema_break" and len(cols) != 1:
        raise ValueError(f"schema_break acts on exactly one column, got {list(cols)}")
    bad = [c for c in cols if c not in allowed] if cols else ["(none given)"]
    if bad:
        raise ValueError(f"{scenario} cannot act on {bad}; allowed: {', '.join(allowed)}")
    if kind == "retype" and cols[0] not in NUMERIC_FEATURES:
        raise ValueError(f"retype needs a numeric column, one of {', '.join(NUMERIC_FEATURES)}")
    return cols


def _spec(scenario: str, severity: float, cols: tuple[str, ...]) -> _Spec:
    """Covariate shift moves the chosen features; concept drift interpolates the coefficients."""
    if scenario == "covariate_shift":
        return _Spec(shift={c: severity for c in cols})
    if scenario == "concept_drift":
        churn = _lerp(_CHURN, _CHURN_DRIFTED, severity)
        return _Spec(churn=churn, spend=_lerp(_SPEND, _SPEND_DRIFTED, severity))
    return _Spec()


def _lerp(a: Mapping[str, float], b: Mapping[str, float], t: float) -> dict[str, float]:
    return {k: a[k] + t * (b[k] - a[k]) for k in a}


# Features and target


def _streams(entropy: int | Sequence[int]) -> dict[str, np.random.Generator]:
    """One independent random stream per column, so changing one column leaves the others as is."""
    children = np.random.SeedSequence(entropy).spawn(len(_STREAMS))
    return {name: np.random.default_rng(s) for name, s in zip(_STREAMS, children, strict=True)}


def _columns(
    *, rows: int, streams: Mapping[str, np.random.Generator], task: str, spec: _Spec
) -> dict[str, np.ndarray]:
    """Draw features in causal order (plan -> usage -> charges -> calls), then the target."""
    shift = spec.shift
    d: dict[str, np.ndarray] = {}
    for name, probs in _CATEGORY_PROBS.items():
        given = d["contract"] if name == "payment_method" else None
        d[name] = _categorical(streams[name], rows, probs, shift.get(name, 0.0), given=given)
    d |= _numeric(streams, rows, d, shift)
    d[TARGETS[task]] = _target(streams["target"], d, task=task, spec=spec)
    return d


def _categorical(
    rng: np.random.Generator,
    rows: int,
    probs: Sequence[Sequence[float]],
    shift: float,
    *,
    given: np.ndarray | None,
) -> np.ndarray:
    """Integer codes drawn from `probs[given]` (one row when unconditional).

    A shift moves up to all the mass towards the reversed category order (half at shift 1.0).
    """
    p = np.asarray(probs)
    w = float(np.clip(0.5 * shift, 0.0, 1.0))
    p = (1 - w) * p + w * p[:, ::-1]
    cum = np.cumsum(p, axis=1)[:, :-1]
    bounds = cum[0] if given is None else cum[given]
    return (rng.random(rows)[:, None] > bounds).sum(axis=1).astype(np.int8)


def _numeric(
    streams: Mapping[str, np.random.Generator],
    rows: int,
    d: Mapping[str, np.ndarray],
    shift: Mapping[str, float],
) -> dict[str, np.ndarray]:
    """Numeric features with realistic shapes and dependencies; `shift` counts `_SHIFT_UNITS`."""

    def moved(name: str) -> float:
        return shift.get(name, 0.0) * _SHIFT_UNITS[name]

    contract, plan = d["contract"], d["plan"]
    rng = streams
    tenure_scale = np.array([9.0, 20.0, 30.0])[contract]
    tenure = rng["tenure_months"].gamma(1.6, tenure_scale) + 1 + moved("tenure_months")
    tenure = np.clip(np.floor(tenure), 1, 72)
    age = np.clip(np.rint(rng["age"].normal(44.0, 14.0, rows) + moved("age")), 18, 90)
    log_usage = np.log([4.0, 12.0, 30.0])[plan] - 0.012 * (age - 44) + moved("data_usage_gb")
    usage = rng["data_usage_gb"].lognormal(log_usage, 0.7)
    charge = np.array([29.0, 59.0, 94.0])[plan] + 0.35 * np.minimum(usage, 60.0)
    charge += rng["monthly_charges"].normal(0.0, 6.0, rows) + moved("monthly_charges")
    monthly = np.clip(charge, 15.0, 250.0)
    discount_mean = np.array([1.0, 7.0, 12.0])[contract] + 0.05 * tenure + moved("discount_pct")
    discount = np.clip(rng["discount_pct"].normal(discount_mean, 4.0), 0.0, 40.0)
    billed = (
        tenure * monthly * (1 - discount / 100) * rng["total_charges"].lognormal(0.0, 0.05, rows)
    )
    total = np.maximum(billed + moved("total_charges"), 0.0)
    rate = np.exp(-0.3 + 0.5 * (plan == 0) + 0.008 * (monthly - 60) + 0.3 * (contract == 0))
    calls = rng["support_calls"].poisson(np.maximum(rate + moved("support_calls"), 0.0))
    return {
        "tenure_months": tenure.astype(np.int64),
        "monthly_charges": np.round(monthly, 2),
        "total_charges": np.round(total, 2),
        "age": age.astype(np.int64),
        "support_calls": calls.astype(np.int64),
        "data_usage_gb": np.round(usage, 3),
        "discount_pct": np.round(discount, 1),
    }


def _churn_logit(d: Mapping[str, np.ndarray], coef: Mapping[str, float]) -> np.ndarray:
    """Log-odds of churn from observed columns only, so P(y|x) is a function of x alone."""
    mtm = (d["contract"] == 0).astype(np.float64)
    tenure, calls = d["tenure_months"], d["support_calls"]
    terms = {
        "month_to_month": mtm,
        "tenure": tenure,
        "tenure_x_premium": tenure * (d["plan"] == 2),
        "support_calls": calls,
        "calls_x_month_to_month": calls * mtm,
        "monthly_charges": d["monthly_charges"] - 60.0,
        "discount": d["discount_pct"],
        "electronic_check": (d["payment_method"] == 0).astype(np.float64),
        "age": d["age"] - 44.0,
    }
    logit = np.full(len(mtm), coef["bias"])
    for name, values in terms.items():
        logit += coef[name] * values
    return logit


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _target(
    rng: np.random.Generator, d: Mapping[str, np.ndarray], *, task: str, spec: _Spec
) -> np.ndarray:
    """`churned` ~ Bernoulli(sigmoid(logit)); `next_month_spend` a nonlinear function plus noise."""
    n = len(d["contract"])
    if task == "classification":
        return (rng.random(n) < _sigmoid(_churn_logit(d, spec.churn))).astype(np.int64)
    c = spec.spend
    risk = _sigmoid(_churn_logit(d, _CHURN))
    charges = d["monthly_charges"] * (1 - d["discount_pct"] / 100)
    overage = np.maximum(d["data_usage_gb"] - _OVERAGE_ALLOWANCE_GB[d["plan"]], 0.0)
    addons = np.sqrt(d["support_calls"]) * (d["contract"] == 0)
    spend = c["charges"] * charges + c["overage"] * overage + c["calls"] * addons
    spend = spend * (1 - c["risk"] * risk) + rng.normal(0.0, _SPEND_NOISE, n)
    return np.round(np.maximum(spend, 0.0), 2)


def _ids(rng: np.random.Generator, index: np.ndarray) -> np.ndarray:
    """Distinct pseudo-random customer numbers: an affine bijection of the row index mod a prime."""
    a, b = (int(v) for v in rng.integers(1, _ID_MODULUS, size=2))
    return (a * rng.permutation(index).astype(np.int64) + b) % _ID_MODULUS


def _event_times(
    rng: np.random.Generator, rows: int, *, start: datetime | None, days: float
) -> np.ndarray:
    """Sorted microsecond UTC timestamps, uniform over the window."""
    start = DEFAULT_START if start is None else start
    start = start if start.tzinfo else start.replace(tzinfo=timezone.utc)
    origin = int(start.timestamp()) * 1_000_000 + start.microsecond
    span = max(int(days * 86_400 * 1_000_000), 1)
    return np.sort(origin + rng.integers(0, span, size=rows))


def _null_masks(
    streams: Mapping[str, np.random.Generator], rows: int, *, spike: Mapping[str, float]
) -> dict[str, np.ndarray]:
    """Null masks, drawn apart from the values (missing completely at random).

    A spike compares the same uniforms with a larger share, so its nulls include the clean ones.
    """
    shares = {**NULL_SHARES, **{c: max(s, NULL_SHARES.get(c, 0.0)) for c, s in spike.items()}}
    return {c: streams[f"null:{c}"].random(rows) < share for c, share in shares.items()}


# Prior shift


def _label_shifted(*, rows: int, seed: int, task: str, severity: float) -> dict[str, np.ndarray]:
    """Rejection-sample clean rows with an acceptance that depends on the label only.

    Accepted rows follow P(x|y) * P(y) * a(y): P(x|y) is untouched, P(y) is reweighted.
    """
    parts: list[dict[str, np.ndarray]] = []
    kept, chunk, offset = 0, 0, 0
    stats: tuple[float, float] | None = None
    while kept < rows or not parts:
        chunk += 1
        n = max(3 * (rows - kept), 1024)
        streams = _streams([seed, chunk])
        d = _columns(rows=n, streams=streams, task=task, spec=_Spec())
        y = d[TARGETS[task]]
        stats = stats or (float(y.mean()), float(y.std()))
        keep = streams["scenario"].random(n) < _acceptance(
            y, task=task, severity=severity, stats=stats
        )
        d["customer_id"] = _ids(_streams(seed)["customer_id"], np.arange(offset, offset + n))
        parts.append({k: v[keep] for k, v in d.items()})
        kept, offset = kept + int(keep.sum()), offset + n
    return {k: np.concatenate([p[k] for p in parts])[:rows] for k in parts[0]}


def _acceptance(
    y: np.ndarray, *, task: str, severity: float, stats: tuple[float, float]
) -> np.ndarray:
    """Classification: positive odds x 4**severity; regression: sigmoid(2 * severity * z(y))."""
    if task == "classification":
        weight = np.where(y == 1, 4.0**severity, 1.0)
        return weight / max(4.0**severity, 1.0)
    return _sigmoid(2.0 * severity * (y - stats[0]) / max(stats[1], 1e-9))


# Batch-level scenarios and assembly


def _inject_unseen(
    data: dict[str, np.ndarray],
    dictionaries: dict[str, list[str]],
    rng: np.random.Generator,
    cols: Sequence[str],
    *,
    share: float,
) -> None:
    """Give `share` of rows (drawn independently per column) a value from `UNSEEN_VALUES`."""
    for col in cols:
        hit = rng.random(len(data[col])) < share
        data[col] = np.where(hit, len(dictionaries[col]), data[col]).astype(np.int8)
        dictionaries[col] = [*dictionaries[col], UNSEEN_VALUES[col]]


def _to_table(
    data: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    dictionaries: Mapping[str, list[str]],
    *,
    target: str,
) -> pa.Table:
    """Assemble the table: strings decoded from integer codes in C++, never in a Python loop."""
    digits = pc.utf8_lpad(pc.cast(pa.array(data["customer_id"]), pa.string()), width=9, padding="0")
    columns: dict[str, pa.Array] = {
        "customer_id": pc.binary_join_element_wise("C", digits, ""),
        "event_time": pa.array(data["event_time"], type=pa.timestamp("us", tz="UTC")),
    }
    for name in FEATURES:
        mask = masks.get(name)
        if name in dictionaries:
            codes = pa.array(data[name], mask=mask)
            labels = pa.DictionaryArray.from_arrays(codes, pa.array(dictionaries[name]))
            columns[name] = labels.cast(pa.string())
        else:
            columns[name] = pa.array(data[name], mask=mask)
    columns[target] = pa.array(data[target])
    return pa.table(columns)


def _break_schema(table: pa.Table, *, column: str, kind: str) -> pa.Table:
    """Drop a column, rename it to `<column>_v2`, or turn a numeric column into strings."""
    if kind == "drop":
        return table.drop_columns([column])
    if kind == "rename":
        return table.rename_columns(
            [f"{column}_v2" if c == column else c for c in table.column_names]
        )
    index = table.column_names.index(column)
    return table.set_column(index, column, pc.cast(table[column], pa.string()))
