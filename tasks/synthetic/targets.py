"""The targets: the churn and spend models, a clean batch's columns, and prior-shifted draws.

`churned` is Bernoulli(sigmoid(logit)) of observed columns only, so P(y|x) is a function of x
alone; `next_month_spend` is a nonlinear function of them plus noise. `Spec` says what the clean
draw is asked to change (covariate shift, target coefficients); `prior_shift` rejection-samples
clean rows with an acceptance that depends on the label only.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from tasks.synthetic.columns import (
    CATEGORY_PROBS,
    TARGETS,
    column_streams,
    draw_categorical,
    draw_ids,
    draw_numeric,
)

# Logistic churn model: terms are built in `_churn_logit`; the drifted set flips the main effects
# (month-to-month customers now stay, long-tenure ones leave) at about the same positive rate.
CHURN: dict[str, float] = {
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
CHURN_DRIFTED: dict[str, float] = {
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
SPEND: dict[str, float] = {"charges": 1.0, "overage": 2.0, "calls": 3.0, "risk": 0.30}
SPEND_DRIFTED: dict[str, float] = {"charges": 0.7, "overage": 0.3, "calls": -2.5, "risk": -0.30}
_SPEND_NOISE = 4.0
_OVERAGE_ALLOWANCE_GB = np.array([5.0, 20.0, 50.0])  # by plan


@dataclass(frozen=True)
class Spec:
    """What the clean generator is asked to change: covariate shift and target coefficients."""

    shift: Mapping[str, float] = field(default_factory=dict)
    churn: Mapping[str, float] = field(default_factory=lambda: dict(CHURN))
    spend: Mapping[str, float] = field(default_factory=lambda: dict(SPEND))


def draw_columns(
    *, rows: int, streams: Mapping[str, np.random.Generator], task: str, spec: Spec
) -> dict[str, np.ndarray]:
    """Draw features in causal order (plan -> usage -> charges -> calls), then the target."""
    shift = spec.shift
    d: dict[str, np.ndarray] = {}
    for name, probs in CATEGORY_PROBS.items():
        given = d["contract"] if name == "payment_method" else None
        d[name] = draw_categorical(streams[name], rows, probs, shift.get(name, 0.0), given=given)
    d |= draw_numeric(streams, rows, d, shift)
    d[TARGETS[task]] = _target(streams["target"], d, task=task, spec=spec)
    return d


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
    rng: np.random.Generator, d: Mapping[str, np.ndarray], *, task: str, spec: Spec
) -> np.ndarray:
    """`churned` ~ Bernoulli(sigmoid(logit)); `next_month_spend` a nonlinear function plus noise."""
    n = len(d["contract"])
    if task == "classification":
        return (rng.random(n) < _sigmoid(_churn_logit(d, spec.churn))).astype(np.int64)
    c = spec.spend
    risk = _sigmoid(_churn_logit(d, CHURN))
    charges = d["monthly_charges"] * (1 - d["discount_pct"] / 100)
    overage = np.maximum(d["data_usage_gb"] - _OVERAGE_ALLOWANCE_GB[d["plan"]], 0.0)
    addons = np.sqrt(d["support_calls"]) * (d["contract"] == 0)
    spend = c["charges"] * charges + c["overage"] * overage + c["calls"] * addons
    spend = spend * (1 - c["risk"] * risk) + rng.normal(0.0, _SPEND_NOISE, n)
    return np.round(np.maximum(spend, 0.0), 2)


def draw_label_shifted(
    *, rows: int, seed: int, task: str, severity: float
) -> dict[str, np.ndarray]:
    """Rejection-sample clean rows with an acceptance that depends on the label only.

    Accepted rows follow P(x|y) * P(y) * a(y): P(x|y) is untouched, P(y) is reweighted.
    """
    parts: list[dict[str, np.ndarray]] = []
    kept, chunk, offset = 0, 0, 0
    stats: tuple[float, float] | None = None
    while kept < rows or not parts:
        chunk += 1
        n = max(3 * (rows - kept), 1024)
        streams = column_streams([seed, chunk])
        d = draw_columns(rows=n, streams=streams, task=task, spec=Spec())
        y = d[TARGETS[task]]
        stats = stats or (float(y.mean()), float(y.std()))
        keep = streams["scenario"].random(n) < _acceptance(
            y, task=task, severity=severity, stats=stats
        )
        d["customer_id"] = draw_ids(
            column_streams(seed)["customer_id"], np.arange(offset, offset + n)
        )
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
