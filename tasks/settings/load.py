"""Loading the settings: the file, the `DRIFTLOOP_*` environment, one-line errors, the columns
checked against the data and the features inferred."""

import difflib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import pyarrow as pa
import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)
from pydantic_settings import (
    BaseSettings,
    SettingsConfigDict,
    SettingsError,
)

from tasks import data
from tasks.settings.sections import (
    CONFIG_FILE,
    ROLE_KINDS,
    ConfigError,
    Features,
    Role,
    Settings,
    StackConfig,
)

_Built = TypeVar("_Built", bound=BaseSettings)


def load_settings(path: Path | None = None, *, check_source: bool = True) -> Settings:
    """Read, validate and resolve the configuration.

    Relative `source` paths are resolved against the config file's folder. With `check_source`,
    the data's schema is read to infer features and check every column the config names.
    """
    path = path or Path(CONFIG_FILE)
    raw = _read_yaml(path)
    settings = _validated(lambda: Settings(**raw), where=path)
    settings = _resolve_source(settings, base=path.parent)
    settings = _load_user_expectations(settings, base=path.parent, path=path)
    if not check_source:
        return settings
    try:
        schema = data.read_schema(settings.dataset.source)
    except data.DataError as exc:
        raise ConfigError(f"{path}: dataset.source: {exc}") from None
    return resolve_features(settings, schema, path=path)


class _StackSettings(BaseSettings):
    """The part of the settings the local stack needs, from the environment alone."""

    model_config = SettingsConfigDict(
        env_prefix="DRIFTLOOP_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    home: str = Settings.model_fields["home"].default
    stack: StackConfig = StackConfig()


def load_stack_settings(path: Path | None = None) -> tuple[str, StackConfig]:
    """The home and the stack's ports: from the config file when there is one (with its
    environment overrides), else from `DRIFTLOOP_HOME` and `DRIFTLOOP_STACK__*` alone.

    `driftloop up/down/status` work before `driftloop init` has written a config.
    """
    path = path or Path(CONFIG_FILE)
    if path.exists():
        settings = load_settings(path, check_source=False)
        return settings.home, settings.stack
    found = _validated(_StackSettings, where="environment")
    return found.home, found.stack


def _validated(build: Callable[[], _Built], *, where: Path | str) -> _Built:
    """Build a settings object from the file and the environment; any problem becomes one
    ConfigError line naming the key (or the `DRIFTLOOP_*` variable) and what is allowed."""
    _check_environment(os.environ)
    try:
        return build()
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where)) from None
    except SettingsError as exc:  # an environment value that is not the JSON a list needs
        raise ConfigError(_describe_environment(exc, os.environ)) from None


def _check_environment(environ: Mapping[str, str]) -> None:
    """A misspelled `DRIFTLOOP_*` variable would be silently ignored: refuse it instead."""
    allowed = {name.upper() for name in Settings.model_fields} | {"CONFIG"}
    for name in environ:
        if name.startswith("DRIFTLOOP_"):
            section = name.removeprefix("DRIFTLOOP_").split("__")[0]
            if section not in allowed:
                choices = ", ".join(f"DRIFTLOOP_{a}" for a in sorted(allowed))
                raise ConfigError(f"environment: {name}: unknown setting; allowed: {choices}")


def _describe_environment(exc: SettingsError, environ: Mapping[str, str]) -> str:
    """Name the `DRIFTLOOP_*` variable pydantic-settings could not parse, and the form it takes."""
    for name, value in sorted(environ.items()):
        if not name.startswith("DRIFTLOOP_"):
            continue
        loc = name.removeprefix("DRIFTLOOP_").lower().split("__")
        shape = _complex_shape(loc)
        if shape is None:
            continue
        try:
            json.loads(value)
        except ValueError:
            example = '\'["a", "b"]\'' if shape == "list" else '\'{"key": "value"}\''
            return (
                f"environment: {name}={value!r}: {'.'.join(loc)} takes a {shape}, written as "
                f"JSON, e.g. {name}={example}"
            )
    return f"environment: {exc}"


def _complex_shape(loc: list[str]) -> str | None:
    """ "list" or "mapping" when the setting at `loc` is one (its env value must be JSON)."""
    model: type[BaseModel] | None = Settings
    annotation: Any = None
    for part in loc:
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        annotation = field.annotation
        model = _section_in(annotation)
    if model is not None:
        return "mapping"
    for candidate in (annotation, *get_args(annotation)):
        origin = get_origin(candidate) or candidate
        if origin in (list, tuple, set):
            return "list"
        if origin is dict:
            return "mapping"
    return None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file (run `driftloop init` to write one)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with a `dataset:` section at the top")
    return raw


def _describe(exc: ValidationError, path: Path | str) -> str:
    """One line per problem: the dotted key, what is wrong, and what is allowed."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = list(_section(err["loc"][:-1]).model_fields)
            hint = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1, cutoff=0.7)
            why = f"unknown key{f' (did you mean {hint[0]!r}?)' if hint else ''}"
            lines.append(f"{key}: {why}; allowed: {', '.join(allowed)}")
        elif err["type"] == "missing":
            field = _section(err["loc"][:-1]).model_fields.get(str(err["loc"][-1]))
            what = field.description if field is not None and field.description else None
            lines.append(f"{key}: required" + (f": {what}" if what else ""))
        elif not key:  # a check across keys: its message names them
            lines.append(str(err["msg"]).removeprefix("Value error, "))
        else:
            lines.append(f"{key}: {err['msg']}")
    return f"{path}: " + "; ".join(lines)


def _section(loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The settings model at a dotted location (`("dataset",)` -> DatasetConfig)."""
    model: type[BaseModel] = Settings
    for part in loc:
        found = _section_in(model.model_fields[str(part)].annotation)
        assert found is not None, f"{part} is not a settings section"
        model = found
    return model


def _section_in(annotation: Any) -> type[BaseModel] | None:
    """The settings section an annotation holds (`Features | None` -> Features), if any."""
    candidates = (annotation, *get_args(annotation))
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def _resolve_source(settings: Settings, *, base: Path) -> Settings:
    """Relative data paths (the source, the validation reference) are relative to the config."""
    dataset = settings.dataset.model_copy(
        update={"source": _relative_to(settings.dataset.source, base)}
    )
    reference = settings.validation.reference
    validation = settings.validation.model_copy(
        update={"reference": reference and _relative_to(reference, base)}
    )
    return settings.model_copy(update={"dataset": dataset, "validation": validation})


def _relative_to(location: str, base: Path) -> str:
    if "://" in location or Path(location).is_absolute():
        return location
    return str((base / location).resolve())


def _load_user_expectations(settings: Settings, *, base: Path, path: Path) -> Settings:
    """Join `validation.expectations_file` to `validation.expectations`, then have GX check each
    entry's name and arguments now rather than when the suite is built."""
    config = settings.validation
    extra: list[dict[str, Any]] = []
    file_label = "validation.expectations_file"
    if config.expectations_file:
        file = base / config.expectations_file
        where = f"{path}: validation.expectations_file: {file}"
        try:
            loaded = yaml.safe_load(file.read_text())  # JSON is YAML too
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            text = str(exc).replace("\n", " ")
            raise ConfigError(f"{where}: not valid YAML or JSON: {text}") from None
        if not isinstance(loaded, list) or not all(isinstance(e, dict) for e in loaded):
            raise ConfigError(f"{where}: must hold a list of {{type, kwargs, meta}} entries")
        extra, file_label = loaded, f"validation.expectations_file: {file}: entry"
    if config.expectations or extra:
        from tasks.expectations import (  # GX: imported only when needed
            ExpectationError,
            check_user_expectations,
        )

        try:
            check_user_expectations(config.expectations)
            check_user_expectations(extra, label=file_label)
        except ExpectationError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    config = config.model_copy(
        update={"expectations": [*config.expectations, *extra], "expectations_file": None}
    )
    return settings.model_copy(update={"validation": config})


def resolve_features(settings: Settings, schema: pa.Schema, *, path: Path) -> Settings:
    """Check the columns the config names against `schema` and infer the features left out.

    `load_settings` does this against the source; the training pipeline does it against the
    champion's training sample plus the new data's added columns (`validation.known_columns`),
    so a feature column that vanished from new data is reported by validation instead of being
    dropped from the inferred features or refused as a config error.
    """
    ds = settings.dataset
    columns = schema.names

    def missing(key: str, column: str) -> ConfigError:
        hint = difflib.get_close_matches(column, columns, n=1)
        maybe = f" (did you mean {hint[0]!r}?)" if hint else ""
        return ConfigError(
            f"{path}: {key}: column {column!r} is not in {ds.source}{maybe}; "
            f"columns: {', '.join(columns)}"
        )

    for key, column in [
        ("dataset.target", ds.target),
        ("dataset.id", ds.id),
        ("dataset.timestamp", ds.timestamp),
    ]:
        if column is not None and column not in columns:
            raise missing(key, column)
    _check_target_type(schema.field(ds.target), task=ds.task, path=path)
    if ds.features is None:
        roles = {c for c in (ds.target, ds.id, ds.timestamp) if c is not None}
        numeric, categorical = data.infer_features(schema, exclude=roles)
        features = Features(numeric=numeric, categorical=categorical)
    else:
        features = ds.features
    declared = features.model_dump() if ds.features else {}
    for kind, names in declared.items():
        for column in names:
            if column not in columns:
                raise missing(f"dataset.features.{kind}", column)
            _check_kind(schema.field(column), key=f"dataset.features.{kind}", path=path)
    for column in ds.slices:
        if column not in columns:
            raise missing("dataset.slices", column)
        _check_kind(schema.field(column), key="dataset.slices", path=path)
    if not features.all:
        raise ConfigError(f"{path}: dataset.features: no feature columns found in {ds.source}")
    resolved = ds.model_copy(update={"features": features})
    return settings.model_copy(update={"dataset": resolved})


def _check_target_type(
    field: pa.Field, *, task: Literal["classification", "regression"], path: Path
) -> None:
    kind = data.column_kind(field.type)
    allowed = ROLE_KINDS[task]  # the target's role is its task
    if kind not in allowed:
        raise ConfigError(
            f"{path}: dataset.target: column {field.name!r} has type {field.type}, which does not "
            f"fit task {task!r}; allowed: {' or '.join(sorted(allowed))} columns"
        )


# The keys whose columns `_check_kind` checks: their role in ROLE_KINDS, and what they are.
_KINDS: dict[str, tuple[Role, str]] = {
    "dataset.features.numeric": ("numeric", "numeric features"),
    "dataset.features.categorical": ("categorical", "categorical features"),
    "dataset.slices": ("slice", "slices (evaluated per value)"),
}
_BELONGS = {
    "string": "list it under dataset.features.categorical",
    "float": "list it under dataset.features.numeric",
    "timestamp": "name it as dataset.timestamp",
}


def _check_kind(field: pa.Field, *, key: str, path: Path) -> None:
    """A declared column must have a type its role can use: no strings as numbers, no lists."""
    kind = data.column_kind(field.type)
    role_name, role = _KINDS[key]
    allowed = ROLE_KINDS[role_name]
    if kind in allowed:
        return
    hint = _BELONGS.get(kind) if key.startswith("dataset.features") else None
    raise ConfigError(
        f"{path}: {key}: column {field.name!r} has type {field.type}; {role} must be "
        f"{', '.join(sorted(allowed))} columns{f' ({hint})' if hint else ''}"
    )
