"""The drift scenarios: their names and defaults, the columns they act on, what they change.

`scenario_spec` turns covariate shift and concept drift into a `Spec` for the clean draw; the
batch-level scenarios act on the drawn data (`inject_unseen`) or the assembled table
(`break_schema`). `prior_shift` draws its own rows (`tasks.synthetic.targets`).
"""

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.synthetic.columns import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES
from tasks.synthetic.targets import CHURN, CHURN_DRIFTED, SPEND, SPEND_DRIFTED, Spec

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
# Values the clean data never contains, used by `unseen_categories`.
UNSEEN_VALUES: dict[str, str] = {
    "contract": "weekly",
    "payment_method": "crypto",
    "region": "offshore",
    "plan": "enterprise",
}
DEFAULT_FEATURES: dict[str, tuple[str, ...]] = {
    "covariate_shift": ("tenure_months", "monthly_charges"),
    "unseen_categories": ("contract", "payment_method"),
    "missing_spike": ("data_usage_gb", "payment_method", "monthly_charges"),
    "schema_break": ("monthly_charges",),
}
UNSEEN_SHARE, MISSING_SHARE = 0.10, 0.40


def scenario_columns(
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


def scenario_spec(scenario: str, severity: float, cols: tuple[str, ...]) -> Spec:
    """Covariate shift moves the chosen features; concept drift interpolates the coefficients."""
    if scenario == "covariate_shift":
        return Spec(shift={c: severity for c in cols})
    if scenario == "concept_drift":
        churn = _lerp(CHURN, CHURN_DRIFTED, severity)
        return Spec(churn=churn, spend=_lerp(SPEND, SPEND_DRIFTED, severity))
    return Spec()


def _lerp(a: Mapping[str, float], b: Mapping[str, float], t: float) -> dict[str, float]:
    return {k: a[k] + t * (b[k] - a[k]) for k in a}


def inject_unseen(
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


def break_schema(table: pa.Table, *, column: str, kind: str) -> pa.Table:
    """Drop a column, rename it to `<column>_v2`, or turn a numeric column into strings."""
    if kind == "drop":
        return table.drop_columns([column])
    if kind == "rename":
        return table.rename_columns(
            [f"{column}_v2" if c == column else c for c in table.column_names]
        )
    index = table.column_names.index(column)
    return table.set_column(index, column, pc.cast(table[column], pa.string()))
