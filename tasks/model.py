"""The tabular model: preprocessing fitted on the training split, an MLP, and a model directory.

    pre = Preprocessor.fit(train, features=settings.features, target="churned", task="regression")
    spec = ModelSpec.build(pre, settings.training)
    save_model("models/churn", model=TabularMLP(spec), spec=spec, preprocessor=pre)
    probs = load_model("models/churn").predict(table)   # (n, k) probabilities, or (n,) values

A model directory holds `weights.safetensors` (tensors only), `preprocessing.json` and
`model.json` (architecture, task, features, classes, and for a classifier the temperature its
probabilities are calibrated with: `tasks.calibration`). Loading it never unpickles anything, and
every write is atomic: a temporary folder beside the target, then a rename. A directory written
before temperatures existed loads with T = 1 (its probabilities as they were).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import nn

from tasks import files
from tasks.calibration import Calibration
from tasks.errors import DriftloopError
from tasks.files import MODEL_FILES, PREPROCESSING, WEIGHTS
from tasks.files import MODEL_JSON as MODEL

if TYPE_CHECKING:
    from tasks.settings import Features, TrainingConfig

Task = Literal["classification", "regression"]
Kind = Literal["binary", "multiclass", "regression"]
Label = str | int | float | bool

FORMAT = "driftloop.model/1"
_PREDICT_CHUNK = 65_536  # rows per forward pass: bounds memory on large tables
# A standardised input is clipped to this many standard deviations: past it a number tells the
# model nothing more, and the network's float32 arithmetic stays finite (1e38 in a request
# would otherwise overflow to inf and answer a null probability)
Z_LIMIT = 1_000.0


class ModelError(DriftloopError, ValueError):
    """The data or the model directory does not fit the model; the message says how."""


# Preprocessing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """Model inputs: numeric values then missing flags (float32), category indices (int64)."""

    numeric: np.ndarray
    categorical: np.ndarray


@dataclass(frozen=True)
class Preprocessor:
    """Statistics learned from the training split only; serialised to JSON, never pickled.

    Numeric: standardised with the training mean/std, missing (null, NaN, inf) -> 0 plus a
    missing-flag column. Categorical: training vocabulary -> 1..n, with 0 for unknown or missing.
    Target: class labels -> 0..k-1 (classification) or standardised values (regression).
    """

    numeric: list[str]
    categorical: list[str]
    target: str
    task: Task
    means: list[float] = field(default_factory=list)
    stds: list[float] = field(default_factory=list)
    vocabularies: list[list[str]] = field(default_factory=list)
    classes: list[Label] = field(default_factory=list)
    target_mean: float = 0.0
    target_std: float = 1.0

    @classmethod
    def fit(cls, table: pa.Table, *, features: Features, target: str, task: Task) -> Preprocessor:
        """Learn the statistics from `table` (the training split)."""
        _require_columns(table, [*features.all, target])
        stats = [_mean_std(_floats(table[name])) for name in features.numeric]
        vocabularies = [_vocabulary(table[name]) for name in features.categorical]
        classes: list[Label] = []
        target_mean, target_std = 0.0, 1.0
        if task == "classification":
            classes = sorted(pc.unique(table[target].drop_null()).to_pylist())
            if len(classes) < 2:
                raise ModelError(f"target {target!r} has {len(classes)} class(es) in training data")
        else:
            target_mean, target_std = _mean_std(_floats(table[target]))
        return cls(
            numeric=list(features.numeric),
            categorical=list(features.categorical),
            target=target,
            task=task,
            means=[m for m, _ in stats],
            stds=[s for _, s in stats],
            vocabularies=vocabularies,
            classes=classes,
            target_mean=target_mean,
            target_std=target_std,
        )

    @property
    def kind(self) -> Kind:
        if self.task == "regression":
            return "regression"
        return "binary" if len(self.classes) == 2 else "multiclass"

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def transform(self, table: pa.Table) -> Encoded:
        """Encode the feature columns of `table`; extra columns are ignored."""
        _require_columns(table, self.features)
        n = table.num_rows
        numeric = np.zeros((n, 2 * len(self.numeric)), dtype=np.float32)
        for i, name in enumerate(self.numeric):
            numeric[:, i], numeric[:, len(self.numeric) + i] = self.standardize(
                i, _floats(table[name])
            )
        categorical = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, name in enumerate(self.categorical):
            vocab = pa.array(self.vocabularies[j], pa.string())
            index = pc.index_in(_strings(table[name]), value_set=vocab)
            categorical[:, j] = pc.fill_null(index, -1).to_numpy() + 1
        return Encoded(numeric=numeric, categorical=categorical)

    def standardize(self, i: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Numeric feature `i`'s values standardised (0 where missing, within +-`Z_LIMIT`), and
        the missing flags (null, NaN, inf)."""
        missing = ~np.isfinite(values)
        with np.errstate(over="ignore", invalid="ignore"):
            z = np.clip((values - self.means[i]) / self.stds[i], -Z_LIMIT, Z_LIMIT)
        return np.where(missing, 0.0, z), missing

    def encode_target(self, table: pa.Table) -> np.ndarray:
        """Class indices (int64) for classification, standardised float32 for regression."""
        _require_columns(table, [self.target])
        column = table[self.target]
        if column.null_count:
            raise ModelError(f"target {self.target!r} has {column.null_count} null value(s)")
        if self.task == "regression":
            values = _floats(column)
            if not np.isfinite(values).all():
                raise ModelError(f"target {self.target!r} has NaN or infinite values")
            return ((values - self.target_mean) / self.target_std).astype(np.float32)
        classes = pa.array(self.classes)
        index = pc.index_in(column.cast(classes.type), value_set=classes)
        if index.null_count:
            unseen = pc.unique(pc.filter(column, pc.is_null(index))).to_pylist()[:5]
            raise ModelError(f"target {self.target!r} has classes unseen in training: {unseen}")
        return index.to_numpy().astype(np.int64)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Preprocessor:
        return cls(**json.loads(text))


def _require_columns(table: pa.Table, columns: list[str]) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ModelError(f"missing column(s) {missing}; the table has {table.column_names}")


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    """float64 values with NaN for nulls."""
    return pc.fill_null(pc.cast(column, pa.float64()), np.nan).to_numpy()


def _strings(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.cast(column, pa.string())


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    std = float(finite.std())
    return float(finite.mean()), std if std > 0 else 1.0


def _vocabulary(column: pa.ChunkedArray) -> list[str]:
    return sorted(pc.unique(_strings(column).drop_null()).to_pylist())


# Network -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """The architecture, enough to rebuild the network from its weights."""

    numeric_inputs: int  # numeric values plus one missing flag per numeric feature
    cardinalities: list[int]  # per categorical feature, slot 0 (unknown) included
    embedding_dims: list[int]
    hidden_layers: list[int]
    dropout: float
    outputs: int  # 1 for binary and regression, k for multiclass

    @classmethod
    def build(cls, pre: Preprocessor, config: TrainingConfig) -> ModelSpec:
        cards = [len(vocab) + 1 for vocab in pre.vocabularies]
        return cls(
            numeric_inputs=2 * len(pre.numeric),
            cardinalities=cards,
            embedding_dims=[min(config.embedding_dim, c) for c in cards],
            hidden_layers=list(config.hidden_layers),
            dropout=config.dropout,
            outputs=len(pre.classes) if pre.kind == "multiclass" else 1,
        )


class TabularMLP(nn.Module):
    """An MLP over standardised numerics and one embedding per categorical feature."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(
            nn.Embedding(c, d) for c, d in zip(spec.cardinalities, spec.embedding_dims, strict=True)
        )
        layers: list[nn.Module] = []
        width = spec.numeric_inputs + sum(spec.embedding_dims)
        for hidden in spec.hidden_layers:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(spec.dropout)]
            width = hidden
        layers.append(nn.Linear(width, spec.outputs))
        self.mlp = nn.Sequential(*layers)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        embedded = [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat([numeric, *embedded], dim=1))


def compute_loss(outputs: torch.Tensor, targets: torch.Tensor, *, kind: Kind) -> torch.Tensor:
    """Per-row loss: log loss (binary, multiclass) or squared error on the standardised target."""
    if kind == "multiclass":
        return nn.functional.cross_entropy(outputs, targets.long(), reduction="none")
    if kind == "binary":
        return nn.functional.binary_cross_entropy_with_logits(
            outputs.squeeze(1), targets.float(), reduction="none"
        )
    return (outputs.squeeze(1) - targets.float()) ** 2


def to_predictions(outputs: torch.Tensor, *, kind: Kind, temperature: float = 1.0) -> torch.Tensor:
    """Class probabilities (n, k) from logits divided by `temperature`, or the standardised value
    (n,) for regression (which has no temperature)."""
    if kind != "regression" and temperature != 1.0:
        outputs = outputs / temperature
    if kind == "binary":
        p = torch.sigmoid(outputs.squeeze(1))
        return torch.stack([1 - p, p], dim=1)
    if kind == "multiclass":
        return torch.softmax(outputs, dim=1)
    return outputs.squeeze(1)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel wrapper (or the model itself)."""
    inner = getattr(model, "module", model)
    assert isinstance(inner, nn.Module)
    return inner


# Model directory ---------------------------------------------------------------------------------


class Predictor:
    """A loaded model: `predict` takes raw feature columns and returns what users need.

    A classifier's probabilities are calibrated: its logits are divided by `temperature` (fitted
    on the validation split after training; 1.0 when none was). `uncalibrated` is the same model
    without it, for a before/after comparison.
    """

    def __init__(
        self,
        *,
        model: TabularMLP,
        spec: ModelSpec,
        preprocessor: Preprocessor,
        calibration: Calibration | None = None,
    ) -> None:
        self.model = model.eval()
        self.spec = spec
        self.preprocessor = preprocessor
        self.calibration = calibration if preprocessor.task == "classification" else None

    @property
    def temperature(self) -> float:
        """What the logits are divided by before the softmax/sigmoid (1.0: uncalibrated)."""
        return self.calibration.temperature if self.calibration else 1.0

    @property
    def uncalibrated(self) -> Predictor:
        """The same network and preprocessing with temperature 1: the raw probabilities."""
        return Predictor(model=self.model, spec=self.spec, preprocessor=self.preprocessor)

    def with_calibration(self, calibration: Calibration | None) -> Predictor:
        """The same network with another calibration (None: uncalibrated)."""
        return Predictor(
            model=self.model, spec=self.spec, preprocessor=self.preprocessor,
            calibration=calibration,
        )  # fmt: skip

    @property
    def classes(self) -> list[Label] | None:
        """Class labels in the column order of `predict`'s probabilities (None for regression)."""
        return (
            list(self.preprocessor.classes) if self.preprocessor.task == "classification" else None
        )

    @property
    def task(self) -> Task:
        return self.preprocessor.task

    @property
    def features(self) -> list[str]:
        return self.preprocessor.features

    def predict(self, table: pa.Table, *, calibrated: bool = True) -> np.ndarray:
        """Probabilities of shape (n, k) for classification (calibrated unless `calibrated` is
        False), values of shape (n,) for regression."""
        kind = self.preprocessor.kind
        temperature = self.temperature if calibrated else 1.0
        parts = [
            to_predictions(out, kind=kind, temperature=temperature).numpy()
            for out in self._outputs(table)
        ]
        out = np.concatenate(parts).astype(np.float64)
        if kind == "regression":
            return out * self.preprocessor.target_std + self.preprocessor.target_mean
        return out

    def logits(self, table: pa.Table) -> np.ndarray:
        """The network's raw outputs, float64: (n, 1) for binary and regression, (n, k)
        multiclass; no temperature applied."""
        return np.concatenate([o.numpy() for o in self._outputs(table)]).astype(np.float64)

    def _outputs(self, table: pa.Table) -> list[torch.Tensor]:
        encoded = self.preprocessor.transform(table)
        parts = []
        with torch.inference_mode():
            for start in range(0, max(table.num_rows, 1), _PREDICT_CHUNK):
                numeric = torch.from_numpy(encoded.numeric[start : start + _PREDICT_CHUNK])
                categorical = torch.from_numpy(encoded.categorical[start : start + _PREDICT_CHUNK])
                parts.append(self.model(numeric, categorical))
        return parts


def save_model(
    directory: str | os.PathLike[str],
    *,
    model: nn.Module,
    spec: ModelSpec,
    preprocessor: Preprocessor,
    calibration: Calibration | None = None,
) -> Path:
    """Write a model directory atomically; an existing one at `directory` is replaced.

    `calibration` (classifiers): the temperature `Predictor.predict` applies, kept in model.json.
    """
    if calibration is not None and not (
        preprocessor.task == "classification"
        and math.isfinite(calibration.temperature)
        and calibration.temperature > 0
    ):
        raise ModelError(
            f"a calibration temperature must be a positive number for a classifier; got "
            f"{calibration.temperature} for a {preprocessor.task} model"
        )
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        (tmp / PREPROCESSING).write_text(preprocessor.to_json())
        (tmp / MODEL).write_text(json.dumps(_describe(spec, preprocessor, calibration), indent=1))
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_model(directory: str | os.PathLike[str]) -> Predictor:
    """Load a model directory written by `save_model`, from a path or a URI (a registry version
    on a bucket); tensors only, nothing is unpickled."""
    fs, path = files.resolve(os.fspath(directory))
    found: dict[str, bytes] = {}
    for name in MODEL_FILES:
        try:
            found[name] = files.read_bytes_fs(fs, f"{path}/{name}")
        except FileNotFoundError:
            raise ModelError(f"{directory}: not a model directory (no {name})") from None
    try:
        meta = json.loads(found[MODEL])
    except ValueError:
        raise ModelError(f"{directory}/{MODEL}: not JSON; is this a driftloop model?") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        shown = meta.get("format") if isinstance(meta, dict) else None
        raise ModelError(f"{directory}: unknown model format {shown!r}; expected {FORMAT}")
    spec = ModelSpec(**meta["architecture"])
    model = TabularMLP(spec)
    try:  # safetensors holds tensors only: a pickle (torch.save, joblib) is refused, never run
        state = load_safetensors(found[WEIGHTS])
    except Exception as exc:  # safetensors raises its own SafetensorError or a ValueError
        raise ModelError(
            f"{directory}/{WEIGHTS}: not a safetensors file ({files.first_line(exc)}); driftloop "
            "loads tensors only and never unpickles a model"
        ) from None
    model.load_state_dict(state)
    preprocessor = Preprocessor.from_json(found[PREPROCESSING].decode())
    calibration = _calibration(meta.get("calibration"), where=f"{directory}/{MODEL}")
    return Predictor(model=model, spec=spec, preprocessor=preprocessor, calibration=calibration)


def _calibration(raw: Any, *, where: str) -> Calibration | None:
    """model.json's calibration; none (a model saved before temperatures existed): T = 1."""
    if raw is None:
        return None
    try:
        found = Calibration.from_json(raw)
        ok = math.isfinite(found.temperature) and found.temperature > 0
    except (TypeError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise ModelError(f"{where}: calibration must hold a positive temperature; got {raw!r}")
    return found


def _describe(
    spec: ModelSpec, pre: Preprocessor, calibration: Calibration | None
) -> dict[str, Any]:
    extra = {"calibration": calibration.to_json()} if calibration is not None else {}
    return {
        "format": FORMAT,
        "task": pre.task,
        "kind": pre.kind,
        "target": pre.target,
        "features": {"numeric": pre.numeric, "categorical": pre.categorical},
        "classes": pre.classes,
        "architecture": asdict(spec),
        **extra,
    }


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target`; an old `target` is moved aside first and removed after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{tmp.name[-12:]}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
