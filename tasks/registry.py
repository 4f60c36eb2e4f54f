"""The model registry: immutable numbered versions and one atomic alias pointer, on any pyarrow.fs.

    version = register(root=home, model="churn", model_dir=result.model_dir,
                       metadata={"metrics": {...}, "params": {...}, "data_fingerprint": fp},
                       extra_files={"reference.parquet": sample, "model_card.md": card.encode()})
    set_alias(root=home, model="churn", alias="champion", version=version, reason="gate passed")
    predictor = load_model(resolve(root=home, model="churn", ref="champion"))

`root` is DRIFTLOOP_HOME, a local path or a URI (`s3://`, `gs://`; the paths returned for a URI
keep its options, `?endpoint_override=...`, so they open the same store). The layout, under
`<root>/registry/<model>/`:

    1/ 2/ ...            immutable versions: the model directory's files (weights.safetensors,
                         preprocessing.json, model.json), metadata.json (with each file's size and
                         SHA-256), and the extra files; on object stores also `.claim-*` markers
    aliases.json         {"aliases": {"champion": 2}, "seq": 7, "updated_at": ...}: the one pointer
    history/00000007.json  one file per alias move: seq, alias, from, to, action, reason, who, at
    .staging/<uuid>/     versions being written (a killed writer's leftovers are swept after 1 h)
    .lock                held with flock around every read-modify-write (local homes)

What every reader can rely on, on either kind of home:
- A version is listed (list_versions, resolve, set_alias) only when its metadata.json, written
  last, is there and every file it records is there at the recorded size; check_version also
  compares the SHA-256s. A writer killed at any instant leaves, at worst, an unlisted folder.
- aliases.json is replaced in one step (rename, or one PUT), so readers see the old or the new
  pointer, never a mix. Readers trust history only up to its `seq`: an entry left by a writer
  killed between writing it and swapping the pointer is ignored, then overwritten by the next move.
- Every read-modify-write (publishing a version, each alias move, rollback) holds the model's
  lock, so concurrent promotions queue, `set_alias(expect=...)` is a true compare-and-set, and the
  history records every move. Reads take no lock.

Local homes: the lock is `fcntl.flock` on `.lock` (released by the kernel when a holder dies). A
version is written whole into `.staging/<uuid>/`, then published by renaming the folder onto
`<n>/`; rename(2) onto a non-empty folder fails, so two writers never get one number. Files are
fsync'ed before the rename that publishes them, so a power cut does not undo it.

Object stores (a home shared by a team as a bucket): a PUT is atomic, but there is no rename and,
through pyarrow, no conditional put, so no lock in the store itself. The lock is the Prefect
global concurrency limit `registry-<model>` (limit 1, created when missing) on the Prefect server
every driftloop process already talks to: writes refuse with a RegistryError when
PREFECT_API_URL is unset (a per-process temporary server would exclude no one). It is held with a
60 s lease that Prefect renews every 45 s; a holder that cannot renew is cancelled before its
lease ends, and a killed holder's lease lapses within about 75 s, after which others proceed (a
writer queues up to 10 min, then gets a RegistryError). Writers of one model name share the
limit, whichever home they write to.

A version is staged, then, under the lock, copied into `<n>/`, metadata.json last. The number
`n` is claimed first, in a way that holds even if a lease lapsed (a writer frozen past its
lease): the writer puts `<n>/.claim-<uuid>` and lists `<n>/`; it goes on only if its claim is
alone there, else tries `n+1`. S3 and GCS list consistently after a write, so of two racing
writers the later lister sees the other's claim: one `<n>/` never holds two writers' files.
Numbers stay unique and increasing but may skip one (a writer died after claiming it). Alias
moves take milliseconds and rely on the lock alone: only a writer frozen for longer than its
lease (a stopped VM) could overlap another's move, and then the pointer stays whole but one move
may overwrite the other unrecorded.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import getpass
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Literal

import pyarrow.fs as pafs

from tasks import events, files
from tasks.errors import DriftloopError

CHAMPION = "champion"
METADATA, ALIASES, HISTORY = files.METADATA, "aliases.json", "history"
# The files of a model directory (named in tasks.files: reading them needs no torch)
MODEL_FILES = files.MODEL_FILES
_STAGING, _LOCK, _CLAIM = ".staging", ".lock", ".claim-"
_STALE_AFTER_S = 3600  # a staging folder or temp file this old belongs to a dead writer
_LEASE_S = 60  # the shortest lease a Prefect server grants: a dead holder blocks others ~75 s
_LOCK_WAIT_S = 600  # how long a writer queues behind others on a shared home before giving up
_LIST_TRIES = 3  # listings of a folder another writer is creating (see _children)
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ALIAS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")  # never all digits, unlike a version
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

Action = Literal["set", "rollback"]
PathOrUri = str | os.PathLike[str]


class RegistryError(DriftloopError, ValueError):
    """The registry cannot do what was asked; the message names the model and the reason."""


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
class _Place:
    """Where one model's registry lives: a file system and the folder on it."""

    fs: pafs.FileSystem
    base: str
    scheme: str  # "" for local paths, "s3://" etc. for URIs
    model: str
    query: str = ""  # the root URI's options (`?endpoint_override=...`): its paths need them too

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def uri(self, path: str) -> str:
        return f"{self.scheme}{path}{self.query}"


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
    place = _place(root, model)
    if not place.local:
        _prefect_api_url(place)  # refuse before uploading anything
    extras = dict(extra_files or {})
    _check_extra_names(extras)
    src_fs, src_dir = files.resolve(os.fspath(model_dir))
    for name in MODEL_FILES:
        if src_fs.get_file_info(f"{src_dir}/{name}").type != pafs.FileType.File:
            raise RegistryError(f"{model_dir}: not a model directory (no {name})")
    _sweep(place)
    stage = place.path(_STAGING, uuid.uuid4().hex)
    if place.local:  # object stores have no folders to create
        place.fs.create_dir(stage, recursive=True)
    for name in MODEL_FILES:
        _copy(src_fs, f"{src_dir}/{name}", place.fs, f"{stage}/{name}")
    for name, source in extras.items():
        if isinstance(source, bytes):
            _write(place.fs, f"{stage}/{name}", source)
        else:
            extra_fs, extra_path = files.resolve(os.fspath(source))
            _copy(extra_fs, extra_path, place.fs, f"{stage}/{name}")
    names = sorted([*MODEL_FILES, *extras])
    record = {
        "model": model,
        "created_at": _now(),
        "code_version": code_version(),
        "flow_run_id": _flow_run_id(),
        "files": names,
        "sha256": {name: _sha256(place.fs, f"{stage}/{name}") for name in names},
        "sizes": {name: place.fs.get_file_info(f"{stage}/{name}").size for name in names},
        **metadata,
    }
    _write(place.fs, f"{stage}/{METADATA}", _dumps(events.jsonable(record)))
    try:
        with _lock(place):
            return _publish(place, stage)
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
    place = _place(root, model)
    if not _ALIAS_NAME.match(alias):
        raise RegistryError(
            f"{model}: alias {alias!r} must start with a letter (letters, digits, _ -)"
        )
    with _lock(place):
        if not _complete(place, version):
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
    place = _place(root, model)
    with _lock(place):
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


# Readers ------------------------------------------------------------------------------------------


def list_versions(*, root: PathOrUri, model: str) -> list[int]:
    """Complete versions, oldest first: metadata.json and every file it records, at its size."""
    place = _place(root, model)
    return [n for n in _numbered(place) if _complete(place, n)]


def get_version(*, root: PathOrUri, model: str, version: int) -> dict[str, Any]:
    """The metadata of one version, with its `version` number and `path` added."""
    place = _place(root, model)
    path = place.path(str(version))
    try:
        record = json.loads(_read(place.fs, f"{path}/{METADATA}"))
    except FileNotFoundError:
        raise RegistryError(f"{model}: no version {version}") from None
    return {**record, "version": version, "path": place.uri(path)}


def check_version(*, root: PathOrUri, model: str, version: int) -> None:
    """Raise `RegistryError` naming each file of the version whose content is not what was
    registered (missing, or a different SHA-256 than metadata.json records)."""
    meta = get_version(root=root, model=model, version=version)
    place = _place(root, model)
    folder = place.path(str(version))
    bad = []
    for name, expected in sorted(meta.get("sha256", {}).items()):
        if not _exists(place.fs, f"{folder}/{name}"):
            bad.append(f"{name} (missing)")
        elif _sha256(place.fs, f"{folder}/{name}") != expected:
            bad.append(f"{name} (changed)")
    if bad:
        raise RegistryError(f"{model}: version {version} is damaged: {', '.join(bad)}")


def aliases(*, root: PathOrUri, model: str) -> dict[str, int]:
    """Every alias and the version it points at (empty for a model with none yet)."""
    return _read_aliases(_place(root, model)).aliases


@dataclass(frozen=True)
class VersionRef:
    """One registered version: its number and its folder (a path or a URI)."""

    model: str
    version: int
    location: str

    def file(self, name: str) -> str:
        """A file of the version, e.g. `ref.file(files.REFERENCE)`."""
        return files.join(self.location, name)


def champion(*, root: PathOrUri, model: str) -> VersionRef | None:
    """The champion, the one look-up every stage uses; None before the first promotion."""
    version = aliases(root=root, model=model).get(CHAMPION)
    if version is None:
        return None
    place = _place(root, model)
    return VersionRef(model=model, version=version, location=place.uri(place.path(str(version))))


def find(*, root: PathOrUri, model: str, ref: str | int) -> VersionRef:
    """A version named by number (3, "3") or by alias ("champion").

    Raises:
        RegistryError: no such complete version, or no such alias; the message lists what there is.
    """
    place = _place(root, model)
    text = str(ref)
    if text.isdigit():
        version = int(text)
        if not _complete(place, version):
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
    place = _place(root, model)
    return _read_history(place, upto=_read_aliases(place).seq)


def code_version() -> str:
    """`git describe` of the checkout this code runs from, else the installed package version."""
    return _code_version()


# Internals ----------------------------------------------------------------------------------------


def _place(root: PathOrUri, model: str) -> _Place:
    if not _MODEL_NAME.match(model):
        raise RegistryError(f"model name {model!r}: use letters, digits, '_', '.' and '-'")
    text = os.fspath(root)
    fs, path = files.resolve(text)
    remote = "://" in text and not _is_local(fs)
    scheme = text.split("://", 1)[0] + "://" if remote else ""
    query = "?" + text.split("?", 1)[1] if remote and "?" in text else ""
    base = f"{path.rstrip('/')}/registry/{model}"
    return _Place(fs=fs, base=base, scheme=scheme, model=model, query=query)


def _is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def _publish(place: _Place, stage: str) -> int:
    """Turn a staged folder into the next version; the caller holds the lock."""
    if not place.local:  # no folder rename on object stores: claim a number, then copy
        return _publish_by_copy(place, stage)
    _fsync_tree(place, stage)
    version = max(_numbered(place), default=0) + 1
    while True:  # the number is claimed by the rename itself
        target = place.path(str(version))
        try:
            place.fs.move(stage, target)
        except OSError:
            if not _exists(place.fs, target):
                raise
            version += 1  # another writer took this number first
            continue
        _fsync_dir(place.base)
        return version


def _publish_by_copy(place: _Place, stage: str) -> int:
    """Copy a staged version into a number claimed for it alone, metadata.json last."""
    version = max(_numbered(place), default=0) + 1
    while not _claim(place, version):
        version += 1  # another writer is in that folder: never share it
    target = place.path(str(version))
    files = [i for i in place.fs.get_file_info(pafs.FileSelector(stage)) if i.base_name != METADATA]
    for info in files:
        place.fs.copy_file(info.path, f"{target}/{info.base_name}")
    place.fs.copy_file(f"{stage}/{METADATA}", f"{target}/{METADATA}")
    place.fs.delete_dir(stage)
    return version


def _claim(place: _Place, version: int) -> bool:
    """Claim `<version>/` without a conditional put: put a claim of our own, then list the folder.

    It is ours only if our claim is alone there. Of two racing writers the later lister sees the
    other's claim (S3 and GCS list consistently after a write), so at most one goes on; if both
    back off, the number stays unused. Never needed under a held lock; it guards a lapsed lease.
    """
    folder = place.path(str(version))
    mine = f"{_CLAIM}{uuid.uuid4().hex}"
    _write(place.fs, f"{folder}/{mine}", b"")
    return [i.base_name for i in _children(place, folder)] == [mine]


def _complete(place: _Place, version: int) -> bool:
    """Whether a version is whole: metadata.json (written last) and every file it records, at the
    size it records. A listing, no content read: check_version compares the SHA-256s."""
    folder = place.path(str(version))
    try:
        record = json.loads(_read(place.fs, f"{folder}/{METADATA}"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    sizes = {i.base_name: i.size for i in _children(place, folder) if i.type == pafs.FileType.File}
    # versions registered before sizes were recorded: the files it lists, present
    expected = record.get("sizes") or dict.fromkeys(record.get("files", []))
    return all(
        name in sizes and (size is None or sizes[name] == size) for name, size in expected.items()
    )


def _move(
    place: _Place, *, alias: str, to: int, action: Action, reason: str, actor: str | None
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
    _write_atomic(place, place.path(HISTORY, f"{change.seq:08d}.json"), _dumps(asdict(change)))
    pointer = {"aliases": {**state.aliases, alias: to}, "seq": change.seq, "updated_at": change.at}
    _write_atomic(place, place.path(ALIASES), _dumps(pointer))
    return change


def _read_aliases(place: _Place) -> _Aliases:
    try:
        raw = json.loads(_read(place.fs, place.path(ALIASES)))
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


def _read_history(place: _Place, *, upto: int) -> list[AliasChange]:
    """History entries 1..upto; a later one is a move whose pointer swap never happened."""
    folder = place.path(HISTORY)
    names = sorted(i.base_name for i in _children(place, folder))
    changes = []
    for name in names:
        stem = name.removesuffix(".json")
        if name.endswith(".json") and stem.isdigit() and int(stem) <= upto:
            changes.append(AliasChange(**json.loads(_read(place.fs, f"{folder}/{name}"))))
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


def _numbered(place: _Place) -> list[int]:
    infos = _children(place, place.base)
    return sorted(
        int(i.base_name)
        for i in infos
        if i.type == pafs.FileType.Directory and i.base_name.isdigit()
    )


@contextlib.contextmanager
def _lock(place: _Place) -> Iterator[None]:
    """An exclusive lock on the model's registry: flock locally, Prefect on shared stores."""
    if not place.local:
        with _prefect_lock(place):
            yield
        return
    import fcntl

    Path(place.base).mkdir(parents=True, exist_ok=True)
    with open(place.path(_LOCK), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released on close, or by the kernel if we die
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _prefect_lock(place: _Place) -> Iterator[None]:
    """Hold the Prefect global concurrency limit `registry-<model>` (limit 1, made if missing)."""
    url = _prefect_api_url(place)
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    name = f"registry-{place.model}"
    _ensure_limit(place, name=name, url=url)
    held = contextlib.ExitStack()
    try:  # strict: a missing limit or a lease that cannot be renewed stops the writer
        held.enter_context(
            concurrency(name, timeout_seconds=_LOCK_WAIT_S, lease_duration=_LEASE_S, strict=True)
        )
    except TimeoutError:
        raise RegistryError(
            f"{place.model}: another writer has held the Prefect limit {name!r} for over "
            f"{_LOCK_WAIT_S} s; try again later"
        ) from None
    except ConcurrencySlotAcquisitionError as exc:
        raise RegistryError(
            f"{place.model}: cannot take the Prefect limit {name!r}: {exc}"
        ) from None
    with held:
        yield


def _prefect_api_url(place: _Place) -> str:
    """The Prefect API that serialises writers to a shared home; refuse without one."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise RegistryError(
            f"{place.model}: writing the registry on {place.uri(place.base)} needs the team's "
            "Prefect server to serialise writers: set PREFECT_API_URL (e.g. http://HOST:4200/api)"
        )
    return str(url)


def _ensure_limit(place: _Place, *, name: str, url: str) -> None:
    """Create the global concurrency limit `name` with limit 1 unless it exists; check it."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            try:
                found = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                with contextlib.suppress(ObjectAlreadyExists):  # another writer made it first
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=name, limit=1)
                    )
                found = client.read_global_concurrency_limit_by_name(name)
    except httpx.HTTPError as exc:
        raise RegistryError(
            f"{place.model}: cannot reach the Prefect API at {url} for the registry lock: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if found.limit != 1 or not found.active:
        raise RegistryError(
            f"{place.model}: the Prefect concurrency limit {name!r} has limit {found.limit}, "
            f"active={found.active}; registry writes need it active with limit 1"
        )


def _sweep(place: _Place) -> None:
    """Remove what writers killed long ago left behind: staging folders and temp files."""
    cutoff = time.time() - _STALE_AFTER_S
    gone = contextlib.suppress(FileNotFoundError)  # another writer swept or published it first
    for info in _children(place, place.path(_STAGING)):
        if info.type == pafs.FileType.Directory and _written_at(place, info) < cutoff:
            with gone:
                place.fs.delete_dir(info.path)
    for folder in (place.base, place.path(HISTORY)):
        for info in _children(place, folder):
            stale = info.mtime is not None and info.mtime.timestamp() < cutoff
            if stale and info.base_name.endswith(".tmp") and info.type == pafs.FileType.File:
                with gone:
                    place.fs.delete_file(info.path)


def _children(place: _Place, folder: str, *, recursive: bool = False) -> list[pafs.FileInfo]:
    """The entries of `folder` (none when it does not exist).

    pyarrow's local listing looks at a folder twice (list it, then check whether it exists), so a
    folder another writer creates in between fails the listing with FileNotFoundError even with
    `allow_not_found`. Listing again sees it settled: there or not.
    """
    selector = pafs.FileSelector(folder, recursive=recursive, allow_not_found=True)
    for _ in range(_LIST_TRIES - 1):
        with contextlib.suppress(FileNotFoundError):
            return list(place.fs.get_file_info(selector))
    return list(place.fs.get_file_info(selector))


def _written_at(place: _Place, folder: pafs.FileInfo) -> float:
    """When a folder was last written to (object stores have no folder times: its newest file)."""
    if folder.mtime is not None:
        return float(folder.mtime.timestamp())
    inside = _children(place, folder.path, recursive=True)  # not found: its writer published it
    times = [i.mtime.timestamp() for i in inside if i.mtime is not None]
    return max(times, default=time.time())  # an empty one may be a writer just starting


def _check_extra_names(extras: Mapping[str, object]) -> None:
    reserved = {*MODEL_FILES, METADATA}
    for name in extras:
        if not _FILE_NAME.match(name) or name in reserved:
            raise RegistryError(
                f"extra file name {name!r}: use a plain file name (letters, digits, _ . -), "
                f"not one of {sorted(reserved)}"
            )


def _write_atomic(place: _Place, path: str, content: bytes) -> None:
    """Replace `path` in one step: a temp file renamed over it (locally), or one PUT."""
    if not place.local:  # one PUT is atomic; a "rename" there would be a copy and a delete
        _write(place.fs, path, content)
        return
    folder, name = path.rsplit("/", 1)
    tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    place.fs.create_dir(folder, recursive=True)
    _write(place.fs, tmp, content)
    _fsync_file(tmp)
    place.fs.move(tmp, path)
    _fsync_dir(folder)


def _write(fs: pafs.FileSystem, path: str, content: bytes) -> None:
    with fs.open_output_stream(path) as out:
        out.write(content)


def _read(fs: pafs.FileSystem, path: str) -> bytes:
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(path)
    with fs.open_input_stream(path) as stream:
        return bytes(stream.read())


def _copy(src_fs: pafs.FileSystem, src: str, dst_fs: pafs.FileSystem, dst: str) -> None:
    if src_fs.get_file_info(src).type != pafs.FileType.File:
        raise RegistryError(f"{src}: no such file to copy into the registry")
    pafs.copy_files(
        src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs, use_threads=False
    )


def _sha256(fs: pafs.FileSystem, path: str) -> str:
    """Of the staged copy, so a reader can check that a version's files are the ones written."""
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _fsync_tree(place: _Place, folder: str) -> None:
    if not place.local:
        return
    for info in place.fs.get_file_info(pafs.FileSelector(folder, recursive=True)):
        if info.type == pafs.FileType.File:
            _fsync_file(info.path)
    _fsync_dir(folder)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):  # some file systems refuse fsync on folders
        _fsync_file(path)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True, default=str).encode()


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
    checkout = Path(__file__).resolve().parent.parent
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
