"""Synthetic customer-churn data with named drift scenarios, for demos, tests and benchmarks.

    write_parquet(generate(rows=100_000, seed=1, scenario="covariate_shift"), "data/churn.parquet")

One seeded, vectorised generator produces both the clean "training" data and every "production"
batch, so a scenario changes exactly what it names and nothing else. Each column draws from its own
random stream: with the same seed, `concept_drift` returns the very same features as `clean` with
a different target, and `covariate_shift` leaves every column it does not touch (or derive from)
as it was.

What `severity` means, per scenario (it is ignored by `clean` and `schema_break`):

| scenario            | changes                                   | severity 1.0                           |
|---------------------|-------------------------------------------|----------------------------------------|
| `clean`             | nothing: a new seed is a fresh sample     |                                        |
| `covariate_shift`   | P(x) of `features`; P(y given x) kept     | +1 reference std (log-mean for usage,  |
|                     | (the target is computed from the shifted  | rate for support calls); categoricals  |
|                     | features with the same function)          | move half their mass to reversed order |
| `prior_shift`       | P(y); P(x given y) kept (rejection        | classification: positive odds x4       |
|                     | sampling by label from a clean pool)      | (20% -> 50%); regression: acceptance   |
|                     |                                           | sigmoid(2 z(y)), mean up ~0.9 std      |
| `concept_drift`     | P(y given x) (coefficients, sign flips);  | the fully drifted coefficients         |
|                     | P(x) identical                            | (0.5 = halfway)                        |
| `unseen_categories` | values never seen in `features`           | 10% of rows per column                 |
| `missing_spike`     | nulls in `features`                       | 40% of rows per column                 |
| `schema_break`      | `kind`: drop / rename (`<col>_v2`) /      |                                        |
|                     | retype (numeric -> string) `features[0]`  |                                        |
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
NULL_SHARES: dict[str, float] = {"data_usage_gb": 0.03, "payment_method": 0.02, "discount_pct": 0.05}

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
    "tenure_months": 18.0,
    "monthly_charges": 28.0,
    "total_charges": 2_000.0,
    "age": 14.0,
    "support_calls": 1.0,  # added to the Poisson rate
    "data_usage_gb": 0.8,  # added to the log-mean
    "discount_pct": 6.0,
}
_UNSEEN_SHARE, _MISSING_SHARE = 0.10, 0.40
_ID_MODULUS = 999_999_937  # a prime: i -> (a*i + b) mod p is a bijection, so ids never collide
_STREAMS = (*FEATURES, "target", "customer_id", "event_time", "nulls", "scenario")

# Logistic churn model: terms are built in `_churn_terms`; the drifted set flips the main effects
# (month-to-month customers now stay, long-tenure ones leave) at about the same positive rate.
_CHURN: dict[str, float] = {
    "bias": -2.55,
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
    "bias": -1.35,
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
        task: `classification` (target `churned`, int64 0/1, ~20% positives) or `regression`.
        scenario: one of `SCENARIOS` (see the module docstring).
        start: start of the `event_time` window (naive means UTC); default 2026-01-01.
        window_days: length of the `event_time` window.
        severity: strength of the scenario; 1.0 is the documented default magnitude.
        features: columns the scenario acts on (covariate_shift, unseen_categories,
            missing_spike, schema_break); defaults in `DEFAULT_FEATURES`.
        kind: for `schema_break` only: `drop`, `rename` or `retype` (default `drop`).
    """
    cols = _check_features(scenario, features)
    _check_args(rows=rows, seed=seed, task=task, scenario=scenario, severity=severity, kind=kind)
    start = DEFAULT_START if start is None else start
    if scenario == "prior_shift":
        data, masks = _label_shifted(rows=rows, seed=seed, task=task, severity=severity)
    else:
        data = _columns(rows=rows, entropy=seed, task=task, spec=_spec_for(scenario, severity, cols))
        masks = _null_masks(data, streams=_streams(seed))
    streams = _streams(seed)
    data["event_time"] = _event_times(streams["event_time"], rows, start=start, days=window_days)
    dictionaries = {name: list(values) for name, values in CATEGORIES.items()}
    if scenario == "missing_spike":
        masks = _missing_spike(masks, streams["scenario"], cols, share=_MISSING_SHARE * severity)
    if scenario == "unseen_categories":
        _inject_unseen(data, dictionaries, streams["scenario"], cols, _UNSEEN_SHARE * severity)
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
    """Write `table` to a local Parquet file atomically: a temp file beside it, then `os.replace`."""
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
    *, rows: int, seed: int, task: str, scenario: str, severity: float, kind: str | None
) -> None:
    """Reject arguments that would silently give the wrong data."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; allowed: {', '.join(SCENARIOS)}")
    if task not in TARGETS:
        raise ValueError(f"unknown task {task!r}; allowed: {', '.join(TARGETS)}")
    if not 0 <= rows < _ID_MODULUS // 8:
        raise ValueError(f"rows must be between 0 and {_ID_MODULUS // 8 - 1}, got {rows}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if not np.isfinite(severity):
        raise ValueError(f"severity must be finite, got {severity}")
    if scenario in ("unseen_categories", "missing_spike"):
        base = _UNSEEN_SHARE if scenario == "unseen_categories" else _MISSING_SHARE
        if not 0 <= base * severity <= 1:
            raise ValueError(f"severity {severity} gives a share of {base * severity:.2f} rows")
    if kind is not None and scenario != "schema_break":
        raise ValueError(f"kind applies to scenario 'schema_break' only, not {scenario!r}")
    if kind is not None and kind not in SCHEMA_BREAKS:
        raise ValueError(f"unknown schema_break kind {kind!r}; allowed: {', '.join(SCHEMA_BREAKS)}")


def _check_features(scenario: str, features: Sequence[str] | None) -> tuple[str, ...]:
    """The scenario's columns: the given ones, checked against what the scenario can act on."""
    if scenario not in DEFAULT_FEATURES:
        if features is not None:
            raise ValueError(f"features do not apply to scenario {scenario!r}")
        return ()
    cols = DEFAULT_FEATURES[scenario] if features is None else tuple(features)
    allowed = {"unseen_categories": CATEGORICAL_FEATURES}.get(scenario, FEATURES)
    if scenario == "schema_break" and len(cols) != 1:
        raise ValueError(f"schema_break acts on exactly one column, got {list(cols)}")
    unknown = [c for c in cols if c not in allowed]
    if unknown or not cols:
        raise ValueError(f"{scenario} cannot act on {unknown or 'no columns'}; allowed: {allowed}")
    return cols


def _spec_for(scenario: str, severity: float, cols: tuple[str, ...]) -> _Spec:
    """Covariate shift moves the chosen features; concept drift interpolates the coefficients."""
    if scenario == "covariate_shift":
        return _Spec(shift={c: severity for c in cols})
    if scenario == "concept_drift":
        return _Spec(churn=_lerp(_CHURN, _CHURN_DRIFTED, severity), spend=_lerp(_SPEND, _SPEND_DRIFTED, severity))
    return _Spec()


def _lerp(a: Mapping[str, float], b: Mapping[str, float], t: float) -> dict[str, float]:
    return {k: a[k] + t * (b[k] - a[k]) for k in a}


# Features and target


def _streams(entropy: int | Sequence[int]) -> dict[str, np.random.Generator]:
    """One independent random stream per column, so changing one column leaves the others as is."""
    children = np.random.SeedSequence(entropy).spawn(len(_STREAMS))
    return {name: np.random.default_rng(s) for name, s in zip(_STREAMS, children, strict=True)}


def _columns(*, rows: int, entropy: int | Sequence[int], task: str, spec: _Spec) -> dict[str, np.ndarray]:
    """Draw features in causal order (contract, plan -> tenure, usage -> charges -> calls), then y."""
    rng, shift = _streams(entropy), spec.shift
    d: dict[str, np.ndarray] = {}
    d["contract"] = _categorical(rng["contract"], rows, [[0.55, 0.24, 0.21]], shift.get("contract"))
    d["plan"] = _categorical(rng["plan"], rows, [[0.40, 0.38, 0.22]], shift.get("plan"))
    d["region"] = _categorical(rng["region"], rows, [[0.22, 0.24, 0.18, 0.21, 0.15]], shift.get("region"))
    pay = [[0.45, 0.20, 0.17, 0.18], [0.20, 0.20, 0.30, 0.30], [0.12, 0.18, 0.35, 0.35]]
    d["payment_method"] = _categorical(rng["payment_method"], rows, pay, shift.get("payment_method"), d["contract"])
    d |= _numeric(rng, rows, d, shift)
    d[TARGETS[task]] = _target(rng["target"], d, task=task, spec=spec)
    d["customer_id"] = _ids(rng["customer_id"], rows)
    return d


def _categorical(
    rng: np.random.Generator,
    rows: int,
    probs: list[list[float]],
    shift: float | None,
    given: np.ndarray | None = None,
) -> np.ndarray:
    """Integer codes from per-row probabilities (`probs[given]`); a shift tilts mass to reversed order."""
    p = np.asarray(probs)
    if shift:
        w = np.clip(0.5 * shift, 0.0, 1.0)
        p = (1 - w) * p + w * p[:, ::-1]
    cum = np.cumsum(p, axis=1)[:, :-1]
    cum_rows = cum[0] if given is None else cum[given]
    u = rng.random(rows)
    return (u[:, None] > cum_rows).sum(axis=1).astype(np.int8) if given is not None else np.searchsorted(cum_rows, u, side="right").astype(np.int8)


def _numeric(
    rng: Mapping[str, np.random.Generator], rows: int, d: Mapping[str, np.ndarray], shift: Mapping[str, float]
) -> dict[str, np.ndarray]:
    """Numeric features with realistic shapes and dependencies; `shift` is in `_SHIFT_UNITS`."""
    def s(name: str) -> float:
        return shift.get(name, 0.0) * _SHIFT_UNITS[name]

    contract, plan = d["contract"], d["plan"]
    tenure_scale = np.array([9.0, 20.0, 30.0])[contract]
    tenure = np.clip(np.floor(rng["tenure_months"].gamma(1.6, tenure_scale) + 1 + s("tenure_months")), 1, 72)
    age = np.clip(np.rint(rng["age"].normal(44.0, 14.0, rows) + s("age")), 18, 90)
    log_usage = np.log(np.array([4.0, 12.0, 30.0]))[plan] - 0.012 * (age - 44) + s("data_usage_gb")
    usage = rng["data_usage_gb"].lognormal(log_usage, 0.7)
    base_charge = np.array([29.0, 59.0, 94.0])[plan]
    noise = rng["monthly_charges"].normal(0.0, 6.0, rows)
    monthly = np.clip(base_charge + 0.35 * np.minimum(usage, 60.0) + noise + s("monthly_charges"), 15.0, 250.0)
    discount_mean = np.array([1.0, 7.0, 12.0])[contract] + 0.05 * tenure + s("discount_pct")
    discount = np.clip(rng["discount_pct"].normal(discount_mean, 4.0), 0.0, 40.0)
    ratio = rng["total_charges"].lognormal(0.0, 0.05, rows)
    total = np.maximum(tenure * monthly * (1 - discount / 100) * ratio + s("total_charges"), 0.0)
    rate = np.exp(-0.3 + 0.5 * (plan == 0) + 0.008 * (monthly - 60) + 0.3 * (contract == 0))
    calls = rng["support_calls"].poisson(np.maximum(rate + s("support_calls"), 0.0))
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
        "bias": 1.0,
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
    return sum((coef[k] * v for k, v in terms.items()), np.zeros(len(mtm)))


def _target(rng: np.random.Generator, d: Mapping[str, np.ndarray], *, task: str, spec: _Spec) -> np.ndarray:
    """`churned` ~ Bernoulli(sigmoid(logit)); `next_month_spend` a nonlinear function plus noise."""
    n = len(d["contract"])
    if task == "classification":
        p = 1.0 / (1.0 + np.exp(-_churn_logit(d, spec.churn)))
        return (rng.random(n) < p).astype(np.int64)
    risk = 1.0 / (1.0 + np.exp(-_churn_logit(d, _CHURN)))
    c, usage = spec.spend, d["data_usage_gb"]
    overage = np.maximum(usage - _OVERAGE_ALLOWANCE_GB[d["plan"]], 0.0)
    addons = np.sqrt(d["support_calls"]) * (d["contract"] == 0)
    charges = d["monthly_charges"] * (1 - d["discount_pct"] / 100)
    spend = (c["charges"] * charges + c["overage"] * overage + c["calls"] * addons) * (1 - c["risk"] * risk)
    return np.round(np.maximum(spend + rng.normal(0.0, _SPEND_NOISE, n), 0.0), 2)


def _ids(rng: np.random.Generator, rows: int, offset: int = 0) -> np.ndarray:
    """Distinct pseudo-random customer numbers: an affine bijection modulo a prime."""
    a, b = rng.integers(1, _ID_MODULUS, size=2)
    return (a * np.arange(offset, offset + rows, dtype=np.int64) + b) % _ID_MODULUS


def _event_times(rng: np.random.Generator, rows: int, *, start: datetime, days: float) -> np.ndarray:
    """Sorted microsecond timestamps, uniform over the window."""
    start = start if start.tzinfo else start.replace(tzinfo=timezone.utc)
    origin = int(start.timestamp()) * 1_000_000 + start.microsecond
    span = int(days * 86_400 * 1_000_000)
    return np.sort(origin + rng.integers(0, max(span, 1), size=rows))


def _null_masks(d: Mapping[str, np.ndarray], *, streams: Mapping[str, np.random.Generator]) -> dict[str, np.ndarray]:
    """Uniforms per nullable column, kept so a spike nests the clean batch's nulls."""
    n = len(d["contract"])
    return {name: streams["nulls"].random(n) for name in FEATURES}


# Prior shift


def _label_shifted(*, rows: int, seed: int, task: str, severity: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Rejection-sample clean rows with a label-only acceptance probability: P(x|y) stays the same."""
    parts: list[dict[str, np.ndarray]] = []
    kept, chunk, offset = 0, 0, 0
    stats: tuple[float, float] | None = None
    while kept < rows:
        chunk += 1
        n = max(3 * (rows - kept), 1024)
        d = _columns(rows=n, entropy=[seed, chunk], task=task, spec=_Spec())
        y = d[TARGETS[task]]
        stats = stats or (float(y.mean()), float(y.std()))
        accept = _acceptance(y, task=task, severity=severity, stats=stats)
        keep = _streams([seed, chunk])["scenario"].random(n) < accept
        d["customer_id"] = _ids(_streams(seed)["customer_id"], n, offset)
        d["nulls"] = np.stack(list(_null_masks(d, streams=_streams([seed, chunk])).values()))
        parts.append({k: (v[..., keep]) for k, v in d.items()})
        kept, offset = kept + int(keep.sum()), offset + n
    data = {k: np.concatenate([p[k] for p in parts], axis=-1)[..., :rows] for k in parts[0]}
    masks = dict(zip(FEATURES, data.pop("nulls"), strict=True))
    return data, masks


def _acceptance(y: np.ndarray, *, task: str, severity: float, stats: tuple[float, float]) -> np.ndarray:
    """Classification: positive odds x 4**severity; regression: sigmoid(2*severity*z(y))."""
    if task == "classification":
        w = np.where(y == 1, 4.0**severity, 1.0)
        return w / w.max(initial=1.0)
    z = (y - stats[0]) / max(stats[1], 1e-9)
    return 1.0 / (1.0 + np.exp(-2.0 * severity * z))


# Batch-level scenarios and assembly


def _missing_spike(
    masks: dict[str, np.ndarray], rng: np.random.Generator, cols: tuple[str, ...], share: float
) -> dict[str, np.ndarray]:
    """Raise the null share of `cols` to `share` (the clean nulls stay null)."""
    del rng  # the spike reuses the clean batch's uniforms, so its nulls include the clean ones
    return {**masks, **{c: np.minimum(masks[c], masks[c] * 0 + 0) if False else masks[c] for c in ()}, "_spike": np.array(cols), "_share": np.array(share)}
