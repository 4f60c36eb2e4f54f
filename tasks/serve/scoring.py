"""A loaded model ready to answer requests: on the GPU when the replica has one, optionally with
its linear layers quantised to int8 (CPU only).

    scorer = Scorer.of(predictor, version=3, quantize=False)
    out = scorer.score(table)            # probabilities (n, k) or values (n,), as Predictor.predict
    items = scorer.answers(out, ids)     # [{"request_id", "prediction", "probabilities"}, ...]

`score` equals `Predictor.predict` in float32 (calibrated probabilities); with int8 the
probabilities differ by at most `INT8_TOLERANCE` on the holdout of tests/test_serve.py.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from tasks.model import Label, Predictor, to_predictions

INT8_TOLERANCE = 0.02  # max |p_int8 - p_float32| per class; regression: 2% of the target's std


def quantized(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantisation of the nn.Linear layers (weights int8, activations quantised on
    the fly); embeddings stay float32."""
    with warnings.catch_warnings():  # torch 2.13 points to torchao; the eager API still works
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


@dataclass
class Scorer:
    """One model version as the replica serves it."""

    predictor: Predictor
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    quantize: bool = False
    device: str = "cpu"
    network: nn.Module | None = None
    _index: list[dict[Any, int]] | None = None  # per categorical feature: value -> slot

    @classmethod
    def of(
        cls,
        predictor: Predictor,
        *,
        version: int,
        metadata: dict[str, Any] | None = None,
        quantize: bool = False,
    ) -> Scorer:
        """Place the network: the GPU when torch sees one (int8 then off: CPU kernels only)."""
        device = "cuda" if torch.cuda.is_available() else "cpu"
        quantize = quantize and device == "cpu"
        plain: nn.Module = predictor.model.eval()
        network = quantized(plain) if quantize else plain.to(device)
        return cls(predictor, version, dict(metadata or {}), quantize, device, network)

    @property
    def classes(self) -> list[Label] | None:
        return self.predictor.classes

    @property
    def features(self) -> list[str]:
        return self.predictor.features

    def score(self, table: pa.Table) -> np.ndarray:
        """Probabilities (n, k) for classification, values (n,) for regression."""
        encoded = self.predictor.preprocessor.transform(table)
        return self._forward(encoded.numeric, encoded.categorical)

    def score_columns(self, columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """`score` for a request's validated values (numbers or None; strings or None), encoded
        in numpy as `Preprocessor.transform` encodes a table: a few microseconds, where the
        table's per-column compute calls cost milliseconds on one record."""
        pre = self.predictor.preprocessor
        rows = len(columns[pre.features[0]]) if pre.features else 0
        width = len(pre.numeric)
        numeric = np.zeros((rows, 2 * width), dtype=np.float32)
        for i, name in enumerate(pre.numeric):
            values = np.asarray(columns[name], dtype=np.float64)  # None -> NaN
            numeric[:, i], numeric[:, width + i] = pre.standardize(i, values)
        categorical = np.zeros((rows, len(pre.categorical)), dtype=np.int64)
        for j, name in enumerate(pre.categorical):
            index = self._vocabulary(j)
            categorical[:, j] = [index.get(v, 0) for v in columns[name]]  # 0: unknown, missing
        return self._forward(numeric, categorical)

    def _vocabulary(self, j: int) -> dict[Any, int]:
        if self._index is None:
            vocabularies = self.predictor.preprocessor.vocabularies
            self._index = [{v: k + 1 for k, v in enumerate(vocab)} for vocab in vocabularies]
        return self._index[j]

    def _forward(self, encoded_numeric: np.ndarray, encoded_categorical: np.ndarray) -> np.ndarray:
        pre = self.predictor.preprocessor
        network = self.network if self.network is not None else self.predictor.model
        with torch.inference_mode():
            numeric = torch.from_numpy(encoded_numeric).to(self.device)
            categorical = torch.from_numpy(encoded_categorical).to(self.device)
            logits = network(numeric, categorical)
            out = to_predictions(logits, kind=pre.kind, temperature=self.predictor.temperature)
            values = out.cpu().numpy().astype(np.float64)
        if pre.kind == "regression":
            return values * pre.target_std + pre.target_mean
        return values

    def predictions(self, out: np.ndarray) -> list[Label] | list[float]:
        """The predicted class of each row (the most probable), or the predicted value."""
        if self.classes is None:
            return [float(v) for v in out]
        classes = self.classes
        return [classes[i] for i in out.argmax(axis=1).tolist()]

    def answers(self, out: np.ndarray, request_ids: list[str]) -> list[dict[str, Any]]:
        """One JSON item per record: its request id, the prediction, the class probabilities."""
        predicted = self.predictions(out)
        rows = out.tolist()
        if not np.isfinite(out).all():  # a broken model: JSON has no NaN, answer null instead
            predicted = [_finite(p) for p in predicted]
            rows = [[_finite(x) for x in r] for r in rows] if out.ndim == 2 else rows
        if self.classes is None:
            return [
                {"request_id": rid, "prediction": value}
                for rid, value in zip(request_ids, predicted, strict=True)
            ]
        names = [str(c) for c in self.classes]
        return [
            {"request_id": rid, "prediction": label, "probabilities": _named(names, row)}
            for rid, label, row in zip(request_ids, predicted, rows, strict=True)
        ]


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _named(names: list[str], row: list[Any]) -> dict[str, Any]:
    return dict(zip(names, row, strict=True))
