"""The settings sections: the data contract and every stage's typed, validated options."""

import os
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from tasks import files, stack
from tasks.errors import DriftloopError
from tasks.settings.base import Strict
from tasks.settings.serving import RolloutConfig, ServingConfig

CONFIG_FILE = "driftloop.yaml"

MetricName = Literal[
    "accuracy", "f1", "roc_auc", "pr_auc", "log_loss", "brier", "ece", "rmse", "mae", "r2"
]


# The column kinds (tasks.data.column_kind) each role in the data contract takes: the one table
# that settings checks declared columns against and validation checks the data against. A target
# takes the kinds of its task. Booleans are numeric (0/1) or categorical, as the user declares.
Role = Literal["id", "timestamp", "numeric", "categorical", "slice", "classification", "regression"]
ROLE_KINDS: dict[Role, frozenset[str]] = {
    "id": frozenset({"integer", "string"}),
    "timestamp": frozenset({"timestamp"}),
    "numeric": frozenset({"integer", "float", "boolean"}),
    "categorical": frozenset({"string", "boolean", "integer"}),
    "slice": frozenset({"string", "boolean", "integer"}),
    "classification": frozenset({"integer", "boolean", "string"}),
    "regression": frozenset({"integer", "float"}),
}


class ConfigError(DriftloopError, ValueError):
    """The configuration is wrong; the message names the key and what is allowed."""


class Features(Strict):
    """Feature columns by kind; inferred from the Parquet schema when left out."""

    numeric: list[str] = []
    categorical: list[str] = []

    @property
    def all(self) -> list[str]:
        return [*self.numeric, *self.categorical]


class DatasetConfig(Strict):
    """The user's data contract."""

    # The descriptions finish "<key>: required: ..." when a key is left out.
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="the data set's name, also the model's name in the registry (e.g. churn)",
    )
    source: str = Field(
        description="the Parquet file, folder of Parquet files or URI (file://, s3://, gs://) "
        "to train on"
    )
    target: str = Field(description="the column to predict")
    task: Literal["classification", "regression"] = "classification"
    features: Features | None = None  # None: inferred from the schema
    id: str | None = None
    timestamp: str | None = None
    slices: list[str] = []  # columns whose values are evaluated separately


class SplitConfig(Strict):
    """Deterministic train/validation/holdout split; the rest goes to train."""

    validation: float = Field(0.15, gt=0, lt=0.5)
    holdout: float = Field(0.15, gt=0, lt=0.5)
    seed: int = 42


class ValidationConfig(Strict):
    """How strict the Great Expectations gate is."""

    min_rows: int = Field(100, ge=1)  # fewer rows than this is not a data set to train on
    range_margin: float = Field(
        0.1, ge=0
    )  # numeric ranges widen by this share of the reference span
    null_tolerance: float = Field(0.05, ge=0, le=1)  # allowed null share above the reference's
    unseen_category_share: float = Field(0.01, ge=0, le=1)  # rows with values outside the domain
    range_share: float = Field(0.01, ge=0, le=1)  # rows outside a numeric column's widened range
    # production batches: share of a column's values allowed outside its range (a covariate shift
    # moves some past the reference's range: that is drift for the monitor, not broken data)
    batch_range_share: float = Field(0.10, ge=0, le=1)
    # a feature's leakage score (tasks/leakage.py: AUC, purity, |correlation|) from which it
    # leaks; iris' petal length, a strong honest feature, scores 0.982
    leakage_threshold: float = Field(0.99, gt=0, le=1)
    # a number more than this many reference spans outside the reference's range is an outlier:
    # the monitor reports it and leaves it out of drift statistics, a retraining leaves its row out
    outlier_spans: float = Field(10.0, gt=0)
    expectations: list[dict[str, Any]] = []  # extra GX expectations: {type: ..., kwargs: {...}}
    expectations_file: str | None = None  # a YAML/JSON list of the same, relative to the config
    # Parquet (file, folder or URI) whose profile the suite learns ranges, nulls and domains from.
    # None: the champion's training sample, or on a first run the data itself (contract checks only)
    reference: str | None = None


class TrainingConfig(Strict):
    """The model and how Ray Train runs it."""

    # The budget is counted in optimizer steps (tasks/budget.py): the same on 1 worker and on N.
    # passes over the training rows (unless min_steps asks for more): with the cosine decay, 10
    # reached the AUC of 20 on churn 200k (0.860 vs 0.859) in 0.77x the steps (bench_quality)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=1)  # global rows a step; capped by the training rows
    # a table of a few hundred rows still converges: wine (124 training rows) kept improving
    # until step ~920 of 1000; at 256 rows a step, 10 epochs of it would be 10 steps
    min_steps: int = Field(1000, ge=0)
    max_steps: int | None = Field(None, ge=1)  # a cap for huge tables; None: epochs decide
    max_evaluations: int = Field(25, ge=1)  # rounds of validate + checkpoint: each costs ~0.5 s
    warmup_share: float = Field(0.05, ge=0, lt=1)  # linear warm-up share of the steps (AdamW)
    min_lr_share: float = Field(0.05, ge=0, le=1)  # the cosine decays to this share of the peak
    learning_rate: float = Field(3e-3, gt=0)  # AdamW peak; tabular MLPs converge in a few epochs
    weight_decay: float = Field(1e-5, ge=0)  # AdamW's decoupled decay
    hidden_layers: list[int] = [128, 64]
    dropout: float = Field(0.1, ge=0, lt=1)
    embedding_dim: int = Field(8, ge=1)  # per categorical feature (capped by its cardinality)
    # evaluation rounds without a lower validation loss before stopping (a round is an epoch
    # on a large table, min_steps / max_evaluations steps on a small one)
    early_stopping_patience: int = Field(5, ge=1)
    num_workers: int = Field(2, ge=1)  # DDP workers (Ray Train)
    use_gpu: bool | Literal["auto"] = "auto"  # auto: GPUs when the Ray cluster has any
    cpus_per_worker: float = Field(1, gt=0)
    max_failures: int = Field(1, ge=0)  # worker-group restarts allowed before the run fails
    checkpoints_to_keep: int = Field(2, ge=1)  # best k by the validation metric
    # classifiers: fit a temperature on the validation split after training (calibrated
    # probabilities; wine's first model had ECE 0.44 without); regression has none
    calibrate: bool = True
    seed: int = 42


class EvaluationConfig(BaseModel):
    """How a model is measured: calibration bins and the perturbations of the robustness check."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    calibration_bins: int = Field(15, ge=2, le=100)  # equal-width ECE bins (Guo et al. 2017 use 15)
    noise_scale: float = Field(0.1, ge=0)  # gaussian noise sd, as a share of each numeric std
    missing_share: float = Field(0.1, ge=0, le=1)  # share of feature values blanked to null
    unseen_share: float = Field(0.1, ge=0, le=1)  # share of categories swapped to rare/unseen ones
    seed: int = 0  # perturbations are seeded: the same model always gets the same score
    production_rows: int = Field(5_000, ge=1)  # most recent labelled production rows judged on


class GateConfig(BaseModel):
    """What a challenger must show to replace the champion (tolerances are relative shares)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    primary_metric: MetricName | None = None  # None: roc_auc (classification), rmse (regression)
    min_improvement: float = Field(0.005, ge=0)  # relative gain (0.5%) on top of significance
    confidence: float = Field(0.95, gt=0.5, lt=1)  # two-sided CI level; its low end must be > 0
    bootstrap_resamples: int = Field(300, ge=50, le=10_000)  # paired resamples of holdout rows
    bootstrap_seed: int = 0  # the same two models on the same rows always get the same decision
    min_slice_rows: int = Field(200, ge=1)  # smaller slices are too noisy to judge
    max_slice_regression: float = Field(0.05, ge=0)  # loss allowed in any judged slice
    # ECE bound, judged with equal-mass bins suited to the rows: the rule fails only when the
    # bootstrap interval's low end is above it (few rows cannot show a small error); None: no rule
    max_calibration_error: float | None = Field(0.05, ge=0, le=1)
    # fewer holdout rows: the calibration rule says "not enough rows" instead of deciding (below
    # ~30 rows, even 2 bins of 15 leave each observed rate +-0.13 and the bootstrap unreliable)
    min_calibration_rows: int = Field(30, ge=1)
    max_robustness_drop: float | None = Field(0.2, ge=0)  # loss under the worst perturbation
    floors: dict[MetricName, float] = {"roc_auc": 0.6, "r2": 0.0}  # absolute bounds for any model
    # labelled production rows neither model trained on: from this many on, they decide (gain,
    # significance, slices, calibration, robustness) and the holdout becomes a no-regression check
    min_production_rows: int = Field(200, ge=1)
    max_holdout_regression: float = Field(0.02, ge=0)  # that check's tolerance (relative loss)
    # the check holds only while the retraining's recency weighting gives the holdout rows at
    # least this mean weight (the newest rows weigh 1; 0.5: they are one half-life old): below
    # it the weighting the data chose says the source no longer describes the present (a new
    # concept), and the check says so instead of holding the new model to the old world
    min_holdout_weight: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_production_regression" in data:
            raise ValueError(
                "gate.max_production_regression is gone: labelled production rows decide the gate "
                "now (from gate.min_production_rows of them), and the holdout becomes the "
                "no-regression check; its tolerance is gate.max_holdout_regression"
            )
        return data


class StackConfig(Strict):
    """Ports of the local stack (`driftloop up`); everything binds to 127.0.0.1."""

    prefect_port: int = Field(stack.PREFECT_PORT, ge=1, le=65535)
    ray_port: int = Field(stack.RAY_PORT, ge=1, le=65535)
    dashboard_port: int = Field(stack.DASHBOARD_PORT, ge=1, le=65535)
    # the runner of the Prefect deployments (its health endpoint; `driftloop up` starts it)
    runner_port: int = Field(stack.RUNNER_PORT, ge=1, le=65535)


# Evidently's drift tests by name (evidently.legacy.calculations.stattests): a typo fails at load
DriftMethod = Literal[
    "wasserstein", "ks", "anderson", "cramer_von_mises", "ed", "es", "mannw", "t_test",
    "empirical_mmd", "jensenshannon", "psi", "kl_div", "hellinger", "chisquare", "z", "g_test",
    "fisher_exact", "TVD",
]  # fmt: skip
RetrainOn = Literal["drift", "decay", "drift_and_decay"]


class MonitoringConfig(Strict):
    """The drift monitor (Evidently) and the retrain governor (tasks/monitor).

    `retrain_on`: `drift` retrains when the inputs drift (quality is shown, not needed);
    `decay` when quality decayed, measured on feedback labels or estimated from the model's
    probabilities (CBPE) where none arrived; `drift_and_decay` when quality decayed and either
    the inputs drifted too or the decay was measured on labels (stable inputs with a measured
    decay are concept drift): drift alone holds, and so does an estimate no drift backs up.
    """

    window_hours: float | None = Field(24.0, gt=0)  # the prediction log of the last this many hours
    window_rows: int | None = Field(None, ge=1)  # and/or its newest this many rows
    min_rows: int = Field(1_000, ge=1)  # fewer rows in a window: no verdict, hold
    # window and reference are sampled (seeded) to this many rows for Evidently and the data
    # checks: Evidently on 1M rows takes ~54 s, and an effect size needs no more rows than this
    sample_rows: int = Field(20_000, ge=100)
    seed: int = 0
    # Evidently's own defaults above 1,000 reference rows, pinned so a small reference does not
    # switch to p-value tests (on 100,000 rows a p-value flags shifts too small to matter)
    num_method: DriftMethod = "wasserstein"  # normed Wasserstein distance
    cat_method: DriftMethod = "jensenshannon"
    num_threshold: float = Field(0.1, gt=0)  # distances: drift above it (p-value tests: below)
    cat_threshold: float = Field(0.1, gt=0)
    per_column_method: dict[str, DriftMethod] = {}  # a column's own test...
    per_column_threshold: dict[str, float] = {}  # ...and threshold
    drift_share: float = Field(0.5, gt=0, le=1)  # share of drifted features that is drift
    retrain_on: RetrainOn = "drift_and_decay"
    windows_needed: int = Field(2, ge=1)  # M: the signal in M of...
    windows_considered: int = Field(3, ge=1)  # ...the last N windows judged for this champion
    cooldown_hours: float = Field(24.0, ge=0)  # per model, after a retrain request
    schedule_minutes: float = Field(60.0, gt=0)  # how often the monitor deployment runs
    # the scheduled monitor removes the prediction log's and the labels' days, and its own
    # reports, older than this (null: keep everything); a retraining reads feedback_days of them
    retention_days: float | None = Field(90.0, gt=0)
    min_labelled_rows: int = Field(200, ge=1)  # fewer labels in the window: quality is estimated
    # relative loss of the primary metric against the champion's holdout value that is decay
    # (the CI of the window's value must also lie below the holdout value)
    max_quality_drop: float = Field(0.05, ge=0, lt=1)
    confidence: float = Field(0.95, gt=0.5, lt=1)  # bootstrap CI level of window quality
    bootstrap_resamples: int = Field(200, ge=50, le=10_000)

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        moved = {"feedback_days": "feedback_days", "feedback_gate_share": "gate_share"}
        for key, new in moved.items():
            if isinstance(data, dict) and key in data:
                raise ValueError(f"monitoring.{key} moved to retraining.{new}")
        return data

    @model_validator(mode="after")
    def _m_of_n(self) -> "MonitoringConfig":
        if self.windows_needed > self.windows_considered:
            raise ValueError(
                f"monitoring.windows_needed ({self.windows_needed}) cannot exceed "
                f"monitoring.windows_considered ({self.windows_considered})"
            )
        if self.window_hours is None and self.window_rows is None:
            raise ValueError("monitoring: set window_hours, window_rows or both")
        return self


class RetrainingConfig(Strict):
    """How a retraining learns the present (flows/retraining.py, tasks/train/recency.py).

    Labelled production rows of the last `feedback_days` that pass the batch checks join the
    source: `gate_share` of them are kept for the gate (never trained on), `selection_share` of
    the rest validate (early stopping, calibration) and choose how fast old rows fade: every
    row weighs 0.5 ** (age / half-life), its age counted back from the newest row (a source row
    by `dataset.timestamp`, a production row by when it was predicted; a row without a time
    counts as old as the oldest, and at least `feedback_days`). One quick fit per candidate
    half-life is scored on the selection rows; the best is trained on Ray Train, and the choice is
    recorded with the version. No single half-life fits every world: the generator's concept
    drift wants the old source almost gone, a table whose old rows still teach wants them all.
    """

    feedback_days: float = Field(30.0, gt=0)  # labelled production rows of the last this long
    gate_share: float = Field(0.3, gt=0, lt=1)  # of them for the gate, never trained on
    selection_share: float = Field(0.25, gt=0, lt=1)  # of the rest: validation that chooses
    # the candidates, in days; null: no decay (every row weighs 1). The first is the choice when
    # fewer than `min_selection_rows` recent rows can choose
    half_lives_days: list[float | None] = Field(
        default_factory=lambda: [None, 90.0, 30.0, 7.0], min_length=1
    )
    min_selection_rows: int = Field(100, ge=1)
    selection_steps: int = Field(300, ge=10)  # optimizer steps of each candidate's quick fit
    # labelled rows that break the batch checks are left out; past this share the run fails
    max_invalid_share: float = Field(0.25, ge=0, le=1)
    # only source rows of the last this many days (needs dataset.timestamp); null: all of them
    source_window_days: float | None = Field(None, gt=0)

    @field_validator("half_lives_days")
    @classmethod
    def _positive(cls, value: list[float | None]) -> list[float | None]:
        if any(h is not None and h <= 0 for h in value):
            raise ValueError("retraining.half_lives_days: each is a number of days > 0, or null")
        return value


class Settings(BaseSettings):
    """Everything driftloop needs to run, from one file plus environment overrides."""

    model_config = SettingsConfigDict(
        env_prefix="DRIFTLOOP_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    # DRIFTLOOP_HOME: registry, predictions, reports, Ray, Prefect. A folder, or a URI (file://,
    # s3://, gs://) that a team shares; `location()` joins paths under it either way.
    home: str = ".driftloop"
    dataset: DatasetConfig = Field(
        description="the data contract: a `dataset:` section with name, source and target"
    )
    split: SplitConfig = SplitConfig()
    validation: ValidationConfig = ValidationConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    gate: GateConfig = GateConfig()
    stack: StackConfig = StackConfig()
    serving: ServingConfig = ServingConfig()
    rollout: RolloutConfig = RolloutConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    retraining: RetrainingConfig = RetrainingConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (passed in as init values), not the other way round.
        return env_settings, init_settings

    @model_validator(mode="after")
    def _columns_have_one_role(self) -> "Settings":
        _check_roles(self.dataset)
        kept, needed = self.monitoring.retention_days, self.retraining.feedback_days
        if kept is not None and kept < needed:
            raise ValueError(
                f"monitoring.retention_days ({kept:g}) is shorter than "
                f"retraining.feedback_days ({needed:g}): a retraining would miss labelled rows"
            )
        if self.retraining.source_window_days is not None and self.dataset.timestamp is None:
            raise ValueError(
                "retraining.source_window_days needs dataset.timestamp: the column that says "
                "how old a source row is"
            )
        return self

    @field_validator("home", mode="before")
    @classmethod
    def _home_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, os.PathLike) else value

    @property
    def home_is_local(self) -> bool:
        """False for an object-store home (s3://, gs://); file:// and paths are local."""
        return "://" not in self.home or self.home.startswith("file://")

    def location(self, *parts: str) -> str:
        """A path or URI under the home: `location("registry", "churn")`; a URI keeps its
        options (`?endpoint_override=...`) at the end."""
        return files.join(self.home, *parts)

    @property
    def features(self) -> Features:
        """The resolved feature columns (filled in by `load_settings`)."""
        assert self.dataset.features is not None, "use load_settings() to resolve the features"
        return self.dataset.features


def _check_roles(ds: DatasetConfig) -> None:
    """Each column plays one role: the target, the id, the timestamp or one kind of feature."""
    roles = {"dataset.target": ds.target, "dataset.id": ds.id, "dataset.timestamp": ds.timestamp}
    named = [(key, column) for key, column in roles.items() if column is not None]
    for i, (key, column) in enumerate(named):
        for other, same in named[:i]:
            if same == column:
                what = "the target column" if other == "dataset.target" else f"also {other}"
                raise ValueError(
                    f"{key} is {what} {column!r}; target, id and timestamp are three columns"
                )
    if ds.features is not None:
        for kind, names in ds.features.model_dump().items():
            key = f"dataset.features.{kind}"
            for column in names:
                role = next((k for k, c in named if c == column), None)
                if role is not None:
                    raise ValueError(
                        f"{key}: {column!r} is {role}, which cannot also be a feature; "
                        "features are the columns the model reads to predict the target"
                    )
                if names.count(column) > 1:
                    raise ValueError(f"{key}: {column!r} is listed twice")
        both = set(ds.features.numeric) & set(ds.features.categorical)
        if both:
            raise ValueError(
                f"dataset.features: {sorted(both)[0]!r} is under both numeric and categorical; "
                "a feature has one kind"
            )
    if ds.target in ds.slices:
        raise ValueError(
            f"dataset.slices: {ds.target!r} is the target (dataset.target); slices are the other "
            "columns whose values the evaluation judges separately"
        )
