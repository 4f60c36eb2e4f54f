"""The feature columns: their names and categories, one random stream per column, and the draws.

Categorical features are integer codes into `CATEGORIES` (decoded when the table is assembled);
numeric ones follow realistic shapes and dependencies (plan -> usage -> charges -> calls). Null
masks are drawn apart from the values, after the target, so nulls are missing completely at random.
"""

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Literal

import numpy as np

Task = Literal["classification", "regression"]
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
# Share of nulls in a clean batch (missing completely at random, after the target is drawn).
NULL_SHARES: dict[str, float] = {
    "data_usage_gb": 0.03,
    "payment_method": 0.02,
    "discount_pct": 0.05,
}

DEFAULT_START = datetime(2026, 1, 1, tzinfo=timezone.utc)

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
# Category probabilities; payment method depends on the contract (one row per contract).
CATEGORY_PROBS: dict[str, list[list[float]]] = {
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


def column_streams(entropy: int | Sequence[int]) -> dict[str, np.random.Generator]:
    """One independent random stream per column, so changing one column leaves the others as is."""
    children = np.random.SeedSequence(entropy).spawn(len(_STREAMS))
    return {name: np.random.default_rng(s) for name, s in zip(_STREAMS, children, strict=True)}


def draw_categorical(
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


def draw_numeric(
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


def draw_ids(rng: np.random.Generator, index: np.ndarray) -> np.ndarray:
    """Distinct pseudo-random customer numbers: an affine bijection of the row index mod a prime."""
    a, b = (int(v) for v in rng.integers(1, _ID_MODULUS, size=2))
    return (a * rng.permutation(index).astype(np.int64) + b) % _ID_MODULUS


def draw_event_times(
    rng: np.random.Generator, rows: int, *, start: datetime | None, days: float
) -> np.ndarray:
    """Sorted microsecond UTC timestamps, uniform over the window."""
    start = DEFAULT_START if start is None else start
    start = start if start.tzinfo else start.replace(tzinfo=timezone.utc)
    origin = int(start.timestamp()) * 1_000_000 + start.microsecond
    span = max(int(days * 86_400 * 1_000_000), 1)
    return np.sort(origin + rng.integers(0, span, size=rows))


def draw_null_masks(
    streams: Mapping[str, np.random.Generator], rows: int, *, spike: Mapping[str, float]
) -> dict[str, np.ndarray]:
    """Null masks, drawn apart from the values (missing completely at random).

    A spike compares the same uniforms with a larger share, so its nulls include the clean ones.
    """
    shares = {**NULL_SHARES, **{c: max(s, NULL_SHARES.get(c, 0.0)) for c, s in spike.items()}}
    return {c: streams[f"null:{c}"].random(rows) < share for c, share in shares.items()}
