"""The HTTP request schemas, generated from a model's features, and errors that name the field.

    schema = Schemas.build(predictor, max_records=10_000)
    table = schema.records(body)        # bytes -> a pyarrow table of the features, or BadRequest
    labels = schema.labels(body)        # bytes -> [(request_id, label), ...], or BadRequest

A record is an object keyed by feature name: numeric features take finite numbers (or null for a
missing value), categorical features take strings (true/false and integers are read as the text the
model's vocabulary holds for them). Unknown or missing keys, wrong types, NaN/inf, an empty or
oversized list are refused with a `BadRequest` whose message names each field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import pyarrow as pa
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)

from tasks.errors import DriftloopError
from tasks.model import Label, Predictor

MAX_ID_LENGTH = 64  # request ids are 32 hex digits; anything longer is not one of ours
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


def _category_text(value: object) -> object:
    """JSON true/false and integers as the text pyarrow casts them to (the vocabulary's form)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return value


Numeric = Annotated[float | None, Field(strict=True, allow_inf_nan=False)]
Categorical = Annotated[StrictStr | None, BeforeValidator(_category_text)]


@dataclass(frozen=True)
class Schemas:
    """The request models of one model version (features, target, classes)."""

    numeric: list[str]
    categorical: list[str]
    target: str
    classes: list[Label] | None  # None: regression
    record: type[BaseModel]
    predict: type[BaseModel]
    feedback: type[BaseModel]
    max_records: int

    @classmethod
    def build(cls, predictor: Predictor, *, max_records: int) -> Schemas:
        pre = predictor.preprocessor
        record = record_model(numeric=pre.numeric, categorical=pre.categorical)
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
        )

    def records(self, body: bytes) -> pa.Table:
        """The features of a `{"records": [...]}` body (or a bare list) as a table."""
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
        columns: dict[str, pa.Array] = {}
        for i, name in enumerate(self.numeric):
            columns[name] = pa.array([getattr(r, f"n{i}") for r in rows], pa.float64())
        for j, name in enumerate(self.categorical):
            columns[name] = pa.array([getattr(r, f"c{j}") for r in rows], pa.string())
        return pa.table(columns)

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


def record_model(*, numeric: list[str], categorical: list[str]) -> type[BaseModel]:
    """One record: every feature required, nothing else allowed. Fields are named n0.., c0.. and
    keyed by the feature's name (an alias), so any column name works, even `model_config`."""
    fields: dict[str, Any] = {}
    for i, name in enumerate(numeric):
        fields[f"n{i}"] = (Numeric, Field(alias=name, description="number (null: missing)"))
    for j, name in enumerate(categorical):
        fields[f"c{j}"] = (Categorical, Field(alias=name, description="category (null: missing)"))
    config = ConfigDict(extra="forbid", populate_by_name=False, title="Record")
    return create_model("Record", __config__=config, **fields)


_BARE: dict[tuple[type[BaseModel], int], TypeAdapter[Any]] = {}


def _bare_list(record: type[BaseModel], max_records: int) -> TypeAdapter[Any]:
    key = (record, max_records)
    if key not in _BARE:
        bounded = Annotated[list[record], Field(min_length=1, max_length=max_records)]  # type: ignore[valid-type]
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
        errors.append({"field": field, "message": message})
    shown = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:_SHOWN_ERRORS])
    more = len(errors) - _SHOWN_ERRORS
    return BadRequest(422, shown + (f"; and {more} more" if more > 0 else ""), errors=errors)


def finite(value: float) -> float | None:
    """A float for a JSON answer (NaN/inf, which JSON cannot carry, as null)."""
    return value if math.isfinite(value) else None
