"""The HTTP request schemas, generated from a model's features, and errors that name the field.

    schema = Schemas.build(predictor, max_records=10_000)
    table = schema.records(body)        # bytes -> a pyarrow table of the features, or BadRequest
    labels = schema.labels(body)        # bytes -> [(request_id, label), ...], or BadRequest

A record is an object keyed by feature name: numeric features take finite numbers (or null for a
missing value), categorical features take strings (true/false and integers are read as the text the
model's vocabulary holds for them; no longer than a limit per feature, from its vocabulary).
Unknown or missing keys, wrong types, NaN/inf, numbers past float32's range, overlong strings, an
empty or oversized list are refused with a `BadRequest` whose message names each field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)
from typing_extensions import TypedDict

from tasks import traffic
from tasks.errors import DriftloopError
from tasks.model import Label, Predictor

Columns = dict[str, list[Any]]  # feature -> validated values (float | None, or str | None)
MAX_ID_LENGTH = 64  # request ids are 32 hex digits; anything longer is not one of ours
MIN_CATEGORY_CHARS = 64  # the least a category may be, whatever the vocabulary's longest
_SHOWN_ERRORS = 5  # problems named in the one-line message (all of them are in `errors`)


class BadRequest(DriftloopError):
    """A request the service refuses: an HTTP status and a message naming the field."""

    def __init__(
        self, status: int, message: str, *, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []

    def body(self) -> dict[str, Any]:
        return {"detail": self.message, "errors": self.errors}


def category_text(value: object) -> object:
    """JSON true/false and integers as the text pyarrow casts them to (the vocabulary's form)."""
    if value.__class__ is str or value is None:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# The model computes in float32: a finite number past its range would overflow to inf
FLOAT32_MAX = float(np.finfo(np.float32).max)
Numeric = Annotated[
    float | None, Field(strict=True, allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)
]


@dataclass(frozen=True)
class Schemas:
    """The request models of one model version (features, target, classes)."""

    numeric: list[str]
    categorical: list[str]
    target: str
    classes: list[Label] | None  # None: regression
    record: Any  # a TypedDict
    predict: type[BaseModel]
    feedback: type[BaseModel]
    max_records: int
    limits: dict[str, int]  # the longest category each categorical feature takes

    @classmethod
    def build(
        cls, predictor: Predictor, *, max_records: int, max_chars: int | None = None
    ) -> Schemas:
        """`max_chars`: the longest category a record may send (None: per feature, 4x the
        longest value of its vocabulary, and at least `MIN_CATEGORY_CHARS`)."""
        pre = predictor.preprocessor
        limits = {
            name: max_chars or max(MIN_CATEGORY_CHARS, 4 * max(map(len, vocab), default=0))
            for name, vocab in zip(pre.categorical, pre.vocabularies, strict=True)
        }
        record = record_model(numeric=pre.numeric, categorical=limits)
        predict = create_model(
            "PredictRequest",
            __config__=ConfigDict(extra="forbid"),
            records=(list[record], Field(min_length=1, max_length=max_records)),  # type: ignore[valid-type]
        )
        feedback = feedback_model(target=pre.target, classes=predictor.classes)
        return cls(
            numeric=list(pre.numeric),
            categorical=list(pre.categorical),
            target=pre.target,
            classes=predictor.classes,
            record=record,
            predict=predict,
            feedback=feedback,
            max_records=max_records,
            limits=limits,
        )

    def records(self, body: bytes) -> Columns:
        """The features of a `{"records": [...]}` body (or a bare list), column by column."""
        try:
            if body.lstrip()[:1] == b"[":
                try:
                    rows = _bare_list(self.record, self.max_records).validate_json(body)
                except ValidationError as exc:
                    raise invalid(exc, prefix="records") from None
            else:
                rows = self.predict.model_validate_json(body).records  # type: ignore[attr-defined]
        except ValidationError as exc:
            raise invalid(exc) from None
        columns: Columns = {name: [r[name] for r in rows] for name in self.numeric}
        for name in self.categorical:
            values = [r[name] for r in rows]
            if any(v.__class__ is not str for v in values):
                values = [category_text(v) for v in values]
            columns[name] = values
        return columns

    def feature_types(self) -> dict[str, pa.DataType]:
        """The Arrow type of each feature column in the prediction log."""
        return traffic.feature_types(numeric=self.numeric, categorical=self.categorical)

    def labels(self, body: bytes) -> list[tuple[str, Label]]:
        """The (request id, label) pairs of a `{"labels": [...]}` body."""
        try:
            parsed = self.feedback.model_validate_json(body)
        except ValidationError as exc:
            raise invalid(exc) from None
        return [(item.request_id, item.label) for item in parsed.labels]  # type: ignore[attr-defined]

    def label_type(self) -> pa.DataType:
        """The Arrow type of the target column in the feedback files."""
        if self.classes is None:
            return pa.float64()
        return pa.array(self.classes).type

    def openapi(self) -> dict[str, dict[str, Any]]:
        """JSON schemas for the OpenAPI page (`components/schemas`)."""
        return {
            "PredictRequest": self.predict.model_json_schema(ref_template=_REF),
            "FeedbackRequest": self.feedback.model_json_schema(ref_template=_REF),
        }


_REF = "#/components/schemas/{model}"


def record_model(*, numeric: list[str], categorical: dict[str, int]) -> Any:
    """One record: every feature required, nothing else allowed; a category no longer than its
    feature's limit (`categorical`: name -> characters). A TypedDict keyed by the features'
    names (any column name works, even `model_config`): validated into plain dicts, several
    times faster than model instances for a 1,000-record request."""
    fields: dict[str, Any] = {}
    for name in numeric:
        fields[name] = Annotated[Numeric, Field(description="a number (null: missing)")]
    for name, limit in categorical.items():
        text = Annotated[StrictStr, Field(max_length=limit)]
        fields[name] = Annotated[
            text | StrictBool | StrictInt | None,
            Field(description=f"a category of at most {limit} characters (null: missing)"),
        ]
    make: Any = TypedDict  # the functional form, with keys known only at run time
    record = make("Record", fields)
    record.__pydantic_config__ = ConfigDict(extra="forbid", title="Record")
    return record


_BARE: dict[tuple[Any, int], TypeAdapter[Any]] = {}


def _bare_list(record: Any, max_records: int) -> TypeAdapter[Any]:
    key = (record, max_records)
    if key not in _BARE:
        bounded = Annotated[list[record], Field(min_length=1, max_length=max_records)]
        _BARE[key] = TypeAdapter(bounded)
    return _BARE[key]


class LabelItem(BaseModel):
    """One label for an earlier request id; subclassed per model with the label's type."""

    model_config = ConfigDict(extra="forbid", title="Label")
    TARGET: ClassVar[str] = "label"
    CLASSES: ClassVar[list[Label] | None] = None

    request_id: Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_LENGTH)]
    label: Any = None

    @model_validator(mode="before")
    @classmethod
    def _target_as_label(cls, data: Any) -> Any:
        target = cls.TARGET
        if isinstance(data, dict) and target != "label" and target in data:
            if "label" in data:
                raise ValueError(f"give the label as {target!r} or as 'label', not both")
            data = {**data, "label": data[target]}
            del data[target]
        return data

    @model_validator(mode="after")
    def _known_class(self) -> LabelItem:
        if self.label is None:
            raise ValueError(f"no label: give {self.TARGET!r} (or 'label')")
        if self.CLASSES is not None and self.label not in self.CLASSES:
            raise ValueError(f"label {self.label!r} is not a class; classes: {self.CLASSES}")
        return self


def feedback_model(*, target: str, classes: list[Label] | None) -> type[BaseModel]:
    """`{"labels": [{"request_id": ..., "<target>" or "label": ...}]}` with the label typed to
    the model's task: one of the classes (of their JSON type), or a finite number."""
    label_type: Any = _class_type(classes) if classes is not None else Numeric
    item = create_model(
        "Label",
        __base__=LabelItem,
        label=(label_type, Field(None, description=f"the true {target!r} (or give {target!r})")),
    )
    item.TARGET, item.CLASSES = target, (None if classes is None else list(classes))
    return create_model(
        "FeedbackRequest",
        __config__=ConfigDict(extra="forbid"),
        labels=(list[item], Field(min_length=1, max_length=10_000)),
    )


def _class_type(classes: list[Label]) -> Any:
    """The strict JSON type of the class labels: bool, int or str (floats: a finite number)."""
    kinds = {type(c) for c in classes}
    if kinds <= {bool}:
        return Annotated[bool | None, Field(strict=True)]
    if kinds <= {int}:
        return Annotated[int | None, Field(strict=True)]
    if kinds <= {str}:
        return Annotated[StrictStr | None, Field()]
    return Numeric


def invalid(exc: ValidationError, *, prefix: str | None = None) -> BadRequest:
    """A 422 naming each field that is wrong (`records.3.tenure: Input should be a number`)."""
    errors = []
    for err in exc.errors(include_url=False):
        loc = (prefix, *err["loc"]) if prefix else err["loc"]
        field = ".".join(str(part) for part in loc) or "body"
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "missing":
            message = "required (a feature of the model)" if "records" in field else "required"
        elif err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] in ("less_than_equal", "greater_than_equal"):
            message = f"{err.get('input')!r} is past float32's range (+-{FLOAT32_MAX:.4g})"
        errors.append({"field": field, "message": message})
    shown = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:_SHOWN_ERRORS])
    more = len(errors) - _SHOWN_ERRORS
    return BadRequest(422, shown + (f"; and {more} more" if more > 0 else ""), errors=errors)


def finite(value: float) -> float | None:
    """A float for a JSON answer (NaN/inf, which JSON cannot carry, as null)."""
    return value if math.isfinite(value) else None
