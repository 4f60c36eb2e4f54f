"""The registry's face: register a version, move an alias, roll back, and every reader.

The layout and what readers can rely on are in the package's docstring (tasks/registry/__init__);
how versions are published is in store.py, how writers exclude each other in lock.py.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import getpass
import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tasks import events, files
from tasks.registry import lock, store
from tasks.registry.store import ALIASES, HISTORY, METADATA, PathOrUri, Place, RegistryError

CHAMPION = "champion"
# The files of a model directory (named in tasks.files: reading them needs no torch)
MODEL_FILES = files.MODEL_FILES
_ALIAS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")  # never all digits, unlike a version
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

Action = Literal["set", "rollback"]


class AliasMoved(RegistryError):
    """A compare-and-set lost: the alias no longer points where the caller saw it."""


class _Any(enum.Enum):
    ANY = "any"


ANY = _Any.ANY  # `set_alias(expect=ANY)`: move the alias wherever it points now


@dataclass(frozen=True)
class AliasChange:
    """One alias move, as kept in the history."""

    seq: int
    alias: str
    from_version: int | None
    to_version: int
    action: Action
    reason: str
    who: str
    at: str
    flow_run_id: str | None = None


@dataclass(frozen=True)
class _Aliases:
    aliases: dict[str, int]
    seq: int


@dataclass(frozen=True)
class VersionRef:
    """One registered version: its number and its folder (a path or a URI)."""

    model: str
    version: int
    location: str

    def file(self, name: str) -> str:
        """A file of the version, e.g. `ref.file(files.REFERENCE)`."""
        return files.join(self.location, name)


# Writers ------------------------------------------------------------------------------------------


def register(
    *,
    root: PathOrUri,
    model: str,
    model_dir: PathOrUri,
    metadata: Mapping[str, Any],
    extra_files: Mapping[str, PathOrUri | bytes] | None = None,
) -> int:
    """Publish a new immutable version and return its number (1, 2, ...).

    Args:
        root: DRIFTLOOP_HOME (a local path or a URI).
        model: the model's name (the dataset name).
        model_dir: a model directory (weights.safetensors, preprocessing.json, model.json).
        metadata: what to keep beside it: metrics, params, data_fingerprint... `created_at`,
            `code_version` and `flow_run_id` are added unless given.
        extra_files: name in the version folder -> a file to copy (path or URI) or its content
            (bytes): the reference sample, the validation suite, the evaluation report, the card.
    """
    place = store.place(root, model)
    if not place.local:
        lock.prefect_api_url(place)  # refuse before uploading anything
    extras = dict(extra_files or {})
    _check_extra_names(extras)
    src_fs, src_dir = files.resolve(os.fspath(model_dir))
    for name in MODEL_FILES:
        if src_fs.get_file_info(f"{src_dir}/{name}").type != pafs.FileType.File:
            raise RegistryError(f"{model_dir}: not a model directory (no {name})")
    store.sweep(place)
    stage = place.path(store.STAGING, uuid.uuid4().hex)
    if place.local:  # object stores have no folders to create
        place.fs.create_dir(stage, recursive=True)
    for name in MODEL_FILES:
        store.copy(src_fs, f"{src_dir}/{name}", place.fs, f"{stage}/{name}")
    for name, source in extras.items():
        if isinstance(source, bytes):
            files.write_atomic_fs(place.fs, f"{stage}/{name}", source)
        else:
            extra_fs, extra_path = files.resolve(os.fspath(source))
            store.copy(extra_fs, extra_path, place.fs, f"{stage}/{name}")
    names = sorted([*MODEL_FILES, *extras])
    record = {
        "model": model,
        "created_at": _now(),
        "code_version": code_version(),
        "flow_run_id": _flow_run_id(),
        "files": names,
        "sha256": {name: store.sha256(place.fs, f"{stage}/{name}") for name in names},
        "sizes": {name: place.fs.get_file_info(f"{stage}/{name}").size for name in names},
        **metadata,
    }
    files.write_atomic_fs(place.fs, f"{stage}/{METADATA}", store.dumps(events.jsonable(record)))
    try:
        with lock.hold(place):
            return store.publish(place, stage)
    except RegistryError:  # the lock was refused: leave no staged copy behind
        with contextlib.suppress(OSError):
            place.fs.delete_dir(stage)
        raise


def set_alias(
    *,
    root: PathOrUri,
    model: str,
    alias: str,
    version: int,
    reason: str,
    actor: str | None = None,
    expect: int | _Any | None = ANY,
) -> AliasChange:
    """Point `alias` at `version` (which must be complete) and record the move in the history.

    With `expect` (a version, or None for "no such alias yet") the move is a compare-and-set: it
    raises `AliasMoved` and changes nothing when the alias points elsewhere by the time the lock
    is held. A promotion passes the champion it was judged against, so a challenger never replaces
    a newer champion it was never compared with.
    """
    place = store.place(root, model)
    if not _ALIAS_NAME.match(alias):
        raise RegistryError(
            f"{model}: alias {alias!r} must start with a letter (letters, digits, _ -)"
        )
    with lock.hold(place):
        if not store.complete(place, version):
            raise RegistryError(f"{model}: no version {version} to point {alias!r} at")
        current = _read_aliases(place).aliases.get(alias)
        if expect is not ANY and current != expect:
            raise AliasMoved(
                f"{model}: {alias!r} points at {_name(current)} now, not {_name(expect)}: "
                f"v{version} was judged against {_name(expect)} and is not moved in"
            )
        return _move(place, alias=alias, to=version, action="set", reason=reason, actor=actor)


def _name(version: int | _Any | None) -> str:
    return "no version" if version is None or version is ANY else f"v{version}"


def rollback(
    *, root: PathOrUri, model: str, reason: str = "rollback", actor: str | None = None
) -> AliasChange:
    """Point the champion back at the previous champion, as the history tells it.

    Rolling back twice goes two champions back: a rolled-back version is skipped, not returned to.
    """
    place = store.place(root, model)
    with lock.hold(place):
        state = _read_aliases(place)
        stack = _champion_stack(_read_history(place, upto=state.seq))
        if len(stack) < 2:
            now = f"version {stack[-1]}" if stack else "none"
            raise RegistryError(
                f"{model}: no earlier champion to roll back to (current champion: {now})"
            )
        return _move(
            place, alias=CHAMPION, to=stack[-2], action="rollback", reason=reason, actor=actor
        )


# The rollout record: which candidate serves beside the champion, and how it ended -----------------

ROLLOUT = "rollout.json"


class RolloutConflict(RegistryError):
    """A rollout record's compare-and-set lost: another rollout runs, or this one ended."""


def read_rollout(*, root: PathOrUri, model: str) -> dict[str, Any] | None:
    """The model's last rollout record (running or ended), None when it never had one."""
    place = store.place(root, model)
    try:
        return dict(json.loads(files.read_bytes_fs(place.fs, place.path(ROLLOUT))))
    except FileNotFoundError:
        return None


def write_rollout(
    *, root: PathOrUri, model: str, record: dict[str, Any], running: str | None
) -> None:
    """Replace the rollout record (atomically, under the registry's lock) if the rollout running
    now is `running` (an id; None: none may run). Raises `RolloutConflict` otherwise."""
    place = store.place(root, model)
    with lock.hold(place):
        now = read_rollout(root=root, model=model)
        live = now["id"] if now and now.get("status") == "running" else None
        if live != running:
            what = f"the {now['mode']} of v{now['candidate']} ({live})" if now and live else "none"
            raise RolloutConflict(
                f"{model}: the running rollout is {what}, not {running or 'none'}"
            )
        files.write_atomic_fs(place.fs, place.path(ROLLOUT), json.dumps(record, indent=2))


# Readers ------------------------------------------------------------------------------------------


def list_versions(*, root: PathOrUri, model: str) -> list[int]:
    """Complete versions, oldest first: metadata.json and every file it records, at its size."""
    place = store.place(root, model)
    return [n for n in store.numbered(place) if store.complete(place, n)]


def get_version(*, root: PathOrUri, model: str, version: int) -> dict[str, Any]:
    """The metadata of one version, with its `version` number and `path` added."""
    place = store.place(root, model)
    path = place.path(str(version))
    try:
        record = json.loads(files.read_bytes_fs(place.fs, f"{path}/{METADATA}"))
    except FileNotFoundError:
        raise RegistryError(f"{model}: no version {version}") from None
    return {**record, "version": version, "path": place.uri(path)}


def check_version(*, root: PathOrUri, model: str, version: int) -> None:
    """Raise `RegistryError` naming each file of the version whose content is not what was
    registered (missing, or a different SHA-256 than metadata.json records)."""
    meta = get_version(root=root, model=model, version=version)
    place = store.place(root, model)
    folder = place.path(str(version))
    bad = []
    for name, expected in sorted(meta.get("sha256", {}).items()):
        if not store.exists(place.fs, f"{folder}/{name}"):
            bad.append(f"{name} (missing)")
        elif store.sha256(place.fs, f"{folder}/{name}") != expected:
            bad.append(f"{name} (changed)")
    if bad:
        raise RegistryError(f"{model}: version {version} is damaged: {', '.join(bad)}")


def aliases(*, root: PathOrUri, model: str) -> dict[str, int]:
    """Every alias and the version it points at (empty for a model with none yet)."""
    return _read_aliases(store.place(root, model)).aliases


def champion(*, root: PathOrUri, model: str) -> VersionRef | None:
    """The champion, the one look-up every stage uses; None before the first promotion."""
    version = aliases(root=root, model=model).get(CHAMPION)
    if version is None:
        return None
    place = store.place(root, model)
    return VersionRef(model=model, version=version, location=place.uri(place.path(str(version))))


def find(*, root: PathOrUri, model: str, ref: str | int) -> VersionRef:
    """A version named by number (3, "3") or by alias ("champion").

    Raises:
        RegistryError: no such complete version, or no such alias; the message lists what there is.
    """
    place = store.place(root, model)
    text = str(ref)
    if text.isdigit():
        version = int(text)
        if not store.complete(place, version):
            versions = list_versions(root=root, model=model)
            raise RegistryError(f"{model}: no version {version}; versions: {versions or 'none'}")
    else:
        table = _read_aliases(place).aliases
        if text not in table:
            names = ", ".join(sorted(table)) or "none yet"
            raise RegistryError(f"{model}: no alias {text!r}; aliases: {names}")
        version = table[text]
    return VersionRef(model=model, version=version, location=place.uri(place.path(str(version))))


def resolve(*, root: PathOrUri, model: str, ref: str | int) -> str:
    """The folder of a version, named by number (3, "3") or by alias ("champion"); a path or URI."""
    return find(root=root, model=model, ref=ref).location


def history(*, root: PathOrUri, model: str) -> list[AliasChange]:
    """Every alias move, oldest first."""
    place = store.place(root, model)
    return _read_history(place, upto=_read_aliases(place).seq)


def trained_on(ref: VersionRef) -> pa.Array:
    """The request ids of the labelled production rows a version trained on (a retraining's;
    empty for a version trained on the source alone)."""
    location = ref.file(files.TRAINED_ON)
    if not files.exists(location):
        return pa.array([], pa.string())
    fs, path = files.resolve(location)
    table = pq.read_table(path, filesystem=fs, columns=["request_id"])
    return table["request_id"].combine_chunks().cast(pa.string())


def code_version() -> str:
    """`git describe` of the checkout this code runs from, else the installed package version."""
    return _code_version()


# The pointer and the history ----------------------------------------------------------------------


def _move(
    place: Place, *, alias: str, to: int, action: Action, reason: str, actor: str | None
) -> AliasChange:
    """Record and apply one alias move; the caller holds the lock."""
    state = _read_aliases(place)
    change = AliasChange(
        seq=state.seq + 1,
        alias=alias,
        from_version=state.aliases.get(alias),
        to_version=to,
        action=action,
        reason=reason,
        who=actor or _who(),
        at=_now(),
        flow_run_id=_flow_run_id(),
    )
    entry = place.path(HISTORY, f"{change.seq:08d}.json")
    files.write_atomic_fs(place.fs, entry, store.dumps(asdict(change)))
    pointer = {"aliases": {**state.aliases, alias: to}, "seq": change.seq, "updated_at": change.at}
    files.write_atomic_fs(place.fs, place.path(ALIASES), store.dumps(pointer))
    return change


def _read_aliases(place: Place) -> _Aliases:
    try:
        raw = json.loads(files.read_bytes_fs(place.fs, place.path(ALIASES)))
    except FileNotFoundError:
        return _Aliases(aliases={}, seq=0)
    except json.JSONDecodeError as exc:  # cannot happen through this module: say where to look
        raise RegistryError(f"{place.uri(place.path(ALIASES))}: not valid JSON: {exc}") from None
    try:
        return _Aliases(
            aliases={str(k): int(v) for k, v in raw["aliases"].items()}, seq=int(raw["seq"])
        )
    except (AttributeError, KeyError, TypeError, ValueError):  # edited by hand, or another tool's
        raise RegistryError(
            f"{place.uri(place.path(ALIASES))}: not an alias pointer (expected "
            '{"aliases": {"<alias>": <version>, ...}, "seq": <n>, ...}); every move is in '
            f"{place.uri(place.path(HISTORY))}, the last one of each alias is where it pointed"
        ) from None


def _read_history(place: Place, *, upto: int) -> list[AliasChange]:
    """History entries 1..upto; a later one is a move whose pointer swap never happened."""
    folder = place.path(HISTORY)
    names = sorted(i.base_name for i in store.children(place, folder))
    changes = []
    for name in names:
        stem = name.removesuffix(".json")
        if name.endswith(".json") and stem.isdigit() and int(stem) <= upto:
            entry = files.read_bytes_fs(place.fs, f"{folder}/{name}")
            changes.append(AliasChange(**json.loads(entry)))
    return changes


def _champion_stack(changes: list[AliasChange]) -> list[int]:
    """The champions in force, oldest first: a promotion pushes, a rollback pops."""
    stack: list[int] = []
    for change in changes:
        if change.alias != CHAMPION:
            continue
        if change.action == "rollback" and stack:
            stack.pop()
        if not stack or stack[-1] != change.to_version:
            stack.append(change.to_version)
    return stack


# Who, when, which code ----------------------------------------------------------------------------


def _check_extra_names(extras: Mapping[str, object]) -> None:
    reserved = {*MODEL_FILES, METADATA}
    for name in extras:
        if not _FILE_NAME.match(name) or name in reserved:
            raise RegistryError(
                f"extra file name {name!r}: use a plain file name (letters, digits, _ . -), "
                f"not one of {sorted(reserved)}"
            )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def _flow_run_id() -> str | None:
    """The Prefect flow run this runs in, if any (no Prefect loaded means no flow run here)."""
    if "prefect" not in sys.modules:
        return None
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


@functools.cache
def _code_version() -> str:
    checkout = Path(__file__).resolve().parents[2]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "describe", "--tags", "--always", "--dirty"],
            cwd=checkout,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    try:
        return importlib_metadata.version("driftloop")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"
