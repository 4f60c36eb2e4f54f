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

The package, bottom up (each module imports only those above it in this list):
- `columns`: the feature names and categories, one random stream per column, the feature draws
  (categorical, numeric, customer ids, event times, null masks);
- `targets`: the churn and spend models, `Spec`, a clean batch's columns, prior-shifted draws;
- `scenarios`: the scenario names and defaults, the columns each acts on, covariate shift and
  concept drift as a `Spec`, unseen categories, schema breaks;
- `generator`: `generate()` (arguments checked, the table assembled), `write_parquet`,
  `example_dataset_config`.
This module is the face: import from `tasks.synthetic`, not from its modules.
"""

from tasks.synthetic.columns import (
    CATEGORICAL_FEATURES,
    CATEGORIES,
    DEFAULT_START,
    FEATURES,
    NULL_SHARES,
    NUMERIC_FEATURES,
    TARGETS,
    Task,
)
from tasks.synthetic.generator import example_dataset_config, generate, write_parquet
from tasks.synthetic.scenarios import DEFAULT_FEATURES, SCENARIOS, SCHEMA_BREAKS, UNSEEN_VALUES

__all__ = [
    "CATEGORICAL_FEATURES",
    "CATEGORIES",
    "DEFAULT_FEATURES",
    "DEFAULT_START",
    "FEATURES",
    "NULL_SHARES",
    "NUMERIC_FEATURES",
    "SCENARIOS",
    "SCHEMA_BREAKS",
    "TARGETS",
    "UNSEEN_VALUES",
    "Task",
    "example_dataset_config",
    "generate",
    "write_parquet",
]
