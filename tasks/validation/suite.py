"""The expectation suite: the data contract and a reference profile, as one GX `ExpectationSuite`.

The suite always follows the CURRENT settings (contract columns, features, tolerances, the user's
expectations): only ranges, null shares and domains come from the profile, and a contract column
the reference lacks gets the contract's checks only (present, a kind its role allows,
`settings.ROLE_KINDS`; no nulls in the id or the target).

The suite is saved as its JSON configs. Each expectation carries `meta = {"check": <problem>,
"scope": <scope>}`: the problem it detects (`CHECKS`) and where it applies (`data`: always;
`labels`: only where the target column is there; `training`: only in `validate`, never on
production batches). A GX expectation costs about 5 ms however few rows it sees, so the per-column
checks are driftloop's own table-level expectations (tasks/expectations.py) that cover every
column at once (one result row per column in the report):
- `expect_table_columns_to_match_set` (GX): every contract column is there;
- `expect_column_kinds_to_match`: each column has the reference's type kind (integer, float,
  boolean, string, timestamp), or one its role allows where the reference lacks the column;
- `expect_column_null_shares_to_be_at_most`: nulls up to the reference's share +
  `null_tolerance`, none in the target or the id;
- `expect_column_values_to_be_in_ranges`: numeric features (and a regression target) inside the
  reference's [min, max] widened by `range_margin` x span, `range_share` of the values outside
  allowed;
- `expect_column_values_to_be_in_sets`: categorical features inside the reference's domain (up to
  `MAX_DOMAIN` values) and a classification target inside its known classes. Feature domains
  allow `unseen_category_share` of the values outside; unknown classes, none;
- `expect_column_proportion_of_unique_values_to_be_between` (GX): unique ids, where `dataset.id`
  is declared and the reference's ids are unique (repeated ids mean the id groups rows), in
  training data only (traffic scores a customer again);
- `expect_table_row_count_to_be_between` (GX): at least `min_rows` rows;
- `expect_column_unique_value_count_to_be_between` (GX): at least two classes;
- `expect_no_target_leakage`: no feature reproduces the target (`tasks.leakage`);
- the user's expectations from `settings.validation.expectations`, each a mapping
  `{"type": "<GX expectation name>", "kwargs": {...}, "meta": {...}}` (`meta` optional), checked
  by `tasks.expectations` at settings-load time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

import pyarrow as pa

from tasks import events, expectations, files
from tasks.settings import ROLE_KINDS, ConfigError, DatasetConfig, Features, ValidationConfig
from tasks.validation.profiles import MAX_DOMAIN, ColumnProfile, profile, reference_profile

if TYPE_CHECKING:
    from great_expectations.core.expectation_suite import ExpectationSuite

    from tasks.settings import Settings

Check = Literal[
    "schema_break",
    "missing_values",
    "out_of_range",
    "unseen_categories",
    "invalid_target",
    "duplicate_ids",
    "too_few_rows",
    "target_leakage",
    "user_expectation",
    "unreadable_file",
]
Scope = Literal["data", "labels", "training"]
CHECKS: tuple[str, ...] = get_args(Check)
# A contract column's role: a feature's kind, the id, the timestamp, or the target (whose kinds
# are its task's in `settings.ROLE_KINDS`)
Role = Literal["id", "timestamp", "numeric", "categorical", "target"]
COLUMNS = "expect_table_columns_to_match_set"
KINDS, NULLS = expectations.KINDS, expectations.NULLS  # driftloop's own (tasks/expectations.py)
RANGES, DOMAINS = expectations.RANGES, expectations.DOMAINS
UNIQUE = "expect_column_proportion_of_unique_values_to_be_between"
CLASS_COUNT = "expect_column_unique_value_count_to_be_between"
ROW_COUNT = "expect_table_row_count_to_be_between"
LEAKAGE = expectations.LEAKAGE
PER_COLUMN = expectations.PER_COLUMN


def roles(dataset: DatasetConfig) -> dict[str, Role]:
    """Each contract column and its role: id, timestamp, numeric, categorical or target."""
    features = _features(dataset)
    found: dict[str, Role] = {}
    if dataset.id is not None:
        found[dataset.id] = "id"
    if dataset.timestamp is not None:
        found[dataset.timestamp] = "timestamp"
    found.update(dict.fromkeys(features.numeric, "numeric"))
    found.update(dict.fromkeys(features.categorical, "categorical"))
    found[dataset.target] = "target"
    return found


# Suites: build, save, load ------------------------------------------------------------------------


def suite_for(table: pa.Table, *, settings: Settings) -> ExpectationSuite:
    """The suite to check `table` with: the current contract, ranges from `reference_profile`."""
    reference = reference_profile(settings)
    learned = reference.table if reference.table is not None else table
    return build_suite(learned, settings=settings, profile_source=reference.source)


def build_suite(
    reference: pa.Table, *, settings: Settings, profile_source: str | None = None
) -> ExpectationSuite:
    """The expectation suite for a data set: the current contract, the reference's profile (for
    the contract columns it has), the user's expectations. `profile_source` says for people where
    `reference` came from (default: "the reference table").

    Raises:
        ConfigError: a user's expectation names a column that is in neither the contract nor
            `reference` (or is otherwise wrong; see `check_user_expectations`).
    """
    gx = expectations.load_gx()
    ds, cfg = settings.dataset, settings.validation
    contract = roles(ds)
    known = [c for c in contract if c in reference.column_names]
    profiles = {p.name: p for p in profile(reference, columns=known, top=MAX_DOMAIN + 1)}
    kinds = {c: _expected_kinds(profiles.get(c), role=r, dataset=ds) for c, r in contract.items()}
    configs = [
        _config(COLUMNS, "schema_break", "data", column_set=list(contract), exact_match=False),
        _config(KINDS, "schema_break", "data", kinds=kinds),
        *_per_column(NULLS, "missing_values", max_shares=_null_limits(profiles, contract, cfg)),
        *_per_column(RANGES, "out_of_range", ranges=_ranges(profiles, contract, ds, cfg)),
        *_per_column(
            DOMAINS, "unseen_categories", value_sets=_domains(profiles, contract, ds, cfg)
        ),
        *_id_checks(profiles.get(ds.id) if ds.id is not None else None),
        *_training_checks(ds, cfg),
        *_user_configs(cfg, columns=[*contract, *reference.column_names]),
    ]
    meta = {
        "dataset": ds.name,
        "target": ds.target,
        "profile": profile_source or "the reference table",
        "reference_rows": reference.num_rows,
    }
    return gx.ExpectationSuite(name=f"{ds.name}-contract", expectations=configs, meta=meta)


def save_suite(suite: ExpectationSuite, location: str | os.PathLike[str]) -> str:
    """Write the suite's expectation configs as JSON (atomically) so it can be replayed later."""
    body = events.jsonable(suite.to_json_dict())
    return files.write_atomic(location, json.dumps(body, indent=2))  # column order kept


def load_suite(location: str | os.PathLike[str]) -> ExpectationSuite:
    """Read a suite written by `save_suite` (a path or a URI)."""
    gx = expectations.load_gx()
    raw = json.loads(files.read_text(os.fspath(location)))
    configs = [{k: e[k] for k in expectations.USER_KEYS if k in e} for e in raw["expectations"]]
    return gx.ExpectationSuite(name=raw["name"], expectations=configs, meta=raw.get("meta"))


def suite_configs(suite: ExpectationSuite) -> list[dict[str, Any]]:
    """The suite's expectations as `{"type", "kwargs", "meta"}` dicts, in suite order."""
    return [
        {"type": c.type, "kwargs": dict(c.kwargs), "meta": dict(c.meta or {})}
        for c in (e.configuration for e in suite.expectations)
    ]


def check_user_expectations(
    config: ValidationConfig, *, label: str = "validation.expectations"
) -> None:
    """`tasks.expectations.check_user_expectations` on `config.expectations`, its errors as
    ConfigError (the same one-line message, naming `label[i]`).

    Raises:
        ConfigError: an entry is not `{type, kwargs, meta}`, names no GX expectation, GX rejects
            its arguments, a regex does not compile, or `min_value` is above `max_value`.
    """
    try:
        expectations.check_user_expectations(config.expectations, label=label)
    except expectations.ExpectationError as exc:
        raise ConfigError(str(exc)) from None


# The contract's checks ----------------------------------------------------------------------------


def _features(dataset: DatasetConfig) -> Features:
    assert dataset.features is not None, "use load_settings() to resolve the features"
    return dataset.features


def _expected_kinds(p: ColumnProfile | None, *, role: Role, dataset: DatasetConfig) -> list[str]:
    """The reference's type kind, or the kinds the column's role allows where it has none."""
    if p is not None and p.kind != "other":
        return [p.kind]
    return sorted(ROLE_KINDS[dataset.task if role == "target" else role])


def _null_limits(
    profiles: Mapping[str, ColumnProfile], contract: Mapping[str, Role], cfg: ValidationConfig
) -> dict[str, float]:
    """Most null share per column: none in the id or target, else the reference's + tolerance."""
    limits: dict[str, float] = {}
    for column, role in contract.items():
        p = profiles.get(column)
        if role in ("id", "target"):
            limits[column] = 0.0
        elif p is not None and p.nulls + cfg.null_tolerance < 1:
            limits[column] = round(p.nulls + cfg.null_tolerance, 6)
    return limits


def _ranges(
    profiles: Mapping[str, ColumnProfile],
    contract: Mapping[str, Role],
    dataset: DatasetConfig,
    cfg: ValidationConfig,
) -> dict[str, dict[str, float]]:
    """Numeric features (and a regression target): the reference's range, widened."""
    out = {}
    for column, role in contract.items():
        p = profiles.get(column)
        numeric = role == "numeric" or (role == "target" and dataset.task == "regression")
        if not numeric or p is None or p.kind not in ("integer", "float") or p.min is None:
            continue
        span = float(p.max) - float(p.min)
        out[column] = {
            "min_value": float(p.min) - cfg.range_margin * span,
            "max_value": float(p.max) + cfg.range_margin * span,
            "mostly": round(1 - cfg.range_share, 6),  # the target's tails too
        }
    return out


def _domains(
    profiles: Mapping[str, ColumnProfile],
    contract: Mapping[str, Role],
    dataset: DatasetConfig,
    cfg: ValidationConfig,
) -> dict[str, Any]:
    """Categorical features' domains (up to `MAX_DOMAIN` values) and a classification target's
    classes."""
    out = {}
    for column, role in contract.items():
        p = profiles.get(column)
        if p is None or p.kind not in ("string", "integer") or not p.top:
            continue
        if role == "target" and dataset.task == "classification":
            out[column] = {"value_set": sorted(v for v, _ in p.top), "mostly": 1.0}
        elif role == "categorical" and p.distinct is not None and p.distinct <= MAX_DOMAIN:
            out[column] = {
                "value_set": sorted(v for v, _ in p.top),
                "mostly": round(1 - cfg.unseen_category_share, 6),
            }
    return out


def _training_checks(dataset: DatasetConfig, cfg: ValidationConfig) -> list[dict[str, Any]]:
    """What only training data must satisfy: enough rows, two classes, no leaked target."""
    leakage = {
        "features": _features(dataset).all,
        "target": dataset.target,
        "task": dataset.task,
        "threshold": cfg.leakage_threshold,
    }
    target = dataset.target
    classes = [_config(CLASS_COUNT, "invalid_target", "training", column=target, min_value=2)]
    return [
        _config(ROW_COUNT, "too_few_rows", "training", min_value=cfg.min_rows),
        *(classes if dataset.task == "classification" else []),
        _config(LEAKAGE, "target_leakage", "training", **leakage),
    ]


def _id_checks(p: ColumnProfile | None) -> list[dict[str, Any]]:
    """Unique ids, where the reference's ids are unique (the aggregate costs GX a fraction of the
    per-row `expect_column_values_to_be_unique`). Training data only: in production traffic the
    same customer is scored again, and that is no data problem."""
    if p is None or p.distinct is None or p.distinct != p.count:
        return []
    return [_config(UNIQUE, "duplicate_ids", "training", column=p.name, min_value=1.0)]


def _per_column(type_: str, check: Check, **kwargs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One table-level expectation over every column in its map; none for an empty map."""
    return [_config(type_, check, "data", **kwargs)] if any(kwargs.values()) else []


def _config(type_: str, check: Check, scope: Scope, **kwargs: Any) -> dict[str, Any]:
    return {"type": type_, "kwargs": kwargs, "meta": {"check": check, "scope": scope}}


def _user_configs(cfg: ValidationConfig, *, columns: Sequence[str]) -> list[dict[str, Any]]:
    """The user's expectations as suite configs; each column they name must be in `columns`."""
    try:
        found = expectations.user_expectations(cfg.expectations, columns=columns)
    except expectations.ExpectationError as exc:
        raise ConfigError(str(exc)) from None
    scope = {"check": "user_expectation", "scope": "data"}
    return [{**c, "meta": {**c["meta"], **scope}} for c in found]
