"""How a model's registry sits on a file system: its place, publishing a version, the listings.

Local homes: a version is written whole into `.staging/<uuid>/`, then published by renaming the
folder onto `<n>/`; rename(2) onto a non-empty folder fails, so two writers never get one number.
Files are fsync'ed before the rename that publishes them, so a power cut does not undo it.

Object stores: a PUT is atomic, but there is no rename and, through pyarrow, no conditional put.
A version is staged, then, under the lock (tasks/registry/lock.py), copied into `<n>/`,
metadata.json last. The number `n` is claimed first, in a way that holds even if a lease lapsed
(a writer frozen past its lease): the writer puts `<n>/.claim-<uuid>` and lists `<n>/`; it goes on
only if its claim is alone there, else tries `n+1`. S3 and GCS list consistently after a write, so
of two racing writers the later lister sees the other's claim: one `<n>/` never holds two writers'
files. Numbers stay unique and increasing but may skip one (a writer died after claiming it).

A version is complete (listed) only when its metadata.json, written last, is there and every file
it records is there at the recorded size; leftovers of writers killed long ago are swept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from tasks import files
from tasks.errors import DriftloopError

METADATA, ALIASES, HISTORY = files.METADATA, "aliases.json", "history"
STAGING, CLAIM = ".staging", ".claim-"
STALE_AFTER_S = 3600  # a staging folder or temp file this old belongs to a dead writer
LIST_TRIES = 3  # listings of a folder another writer is creating (see `children`)
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

PathOrUri = str | os.PathLike[str]


class RegistryError(DriftloopError, ValueError):
    """The registry cannot do what was asked; the message names the model and the reason."""


@dataclass(frozen=True)
class Place:
    """Where one model's registry lives: a file system and the folder on it."""

    fs: pafs.FileSystem
    base: str
    scheme: str  # "" for local paths, "s3://" etc. for URIs
    model: str
    query: str = ""  # the root URI's options (`?endpoint_override=...`): its paths need them too

    @property
    def local(self) -> bool:
        return files.is_local(self.fs)

    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def uri(self, path: str) -> str:
        return f"{self.scheme}{path}{self.query}"


def place(root: PathOrUri, model: str) -> Place:
    """The place of `model`'s registry under `root` (DRIFTLOOP_HOME: a path or a URI)."""
    if not _MODEL_NAME.match(model):
        raise RegistryError(f"model name {model!r}: use letters, digits, '_', '.' and '-'")
    text = os.fspath(root)
    fs, path = files.resolve(text)
    remote = "://" in text and not files.is_local(fs)
    scheme = text.split("://", 1)[0] + "://" if remote else ""
    query = "?" + text.split("?", 1)[1] if remote and "?" in text else ""
    base = f"{path.rstrip('/')}/registry/{model}"
    return Place(fs=fs, base=base, scheme=scheme, model=model, query=query)


# Publishing ---------------------------------------------------------------------------------------


def publish(place: Place, stage: str) -> int:
    """Turn a staged folder into the next version; the caller holds the lock."""
    if not place.local:  # no folder rename on object stores: claim a number, then copy
        return _publish_by_copy(place, stage)
    _fsync_tree(place, stage)
    version = max(numbered(place), default=0) + 1
    while True:  # the number is claimed by the rename itself
        target = place.path(str(version))
        try:
            place.fs.move(stage, target)
        except OSError:
            if not exists(place.fs, target):
                raise
            version += 1  # another writer took this number first
            continue
        files.fsync_dir(place.base)
        return version


def _publish_by_copy(place: Place, stage: str) -> int:
    """Copy a staged version into a number claimed for it alone, metadata.json last."""
    version = max(numbered(place), default=0) + 1
    while not claim(place, version):
        version += 1  # another writer is in that folder: never share it
    target = place.path(str(version))
    todo = [i for i in place.fs.get_file_info(pafs.FileSelector(stage)) if i.base_name != METADATA]
    for info in todo:
        place.fs.copy_file(info.path, f"{target}/{info.base_name}")
    place.fs.copy_file(f"{stage}/{METADATA}", f"{target}/{METADATA}")
    place.fs.delete_dir(stage)
    return version


def claim(place: Place, version: int) -> bool:
    """Claim `<version>/` without a conditional put: put a claim of our own, then list the folder.

    It is ours only if our claim is alone there. Of two racing writers the later lister sees the
    other's claim (S3 and GCS list consistently after a write), so at most one goes on; if both
    back off, the number stays unused. Never needed under a held lock; it guards a lapsed lease.
    """
    folder = place.path(str(version))
    mine = f"{CLAIM}{uuid.uuid4().hex}"
    files.write_atomic_fs(place.fs, f"{folder}/{mine}", b"")  # on an object store: one PUT
    return [i.base_name for i in children(place, folder)] == [mine]


def complete(place: Place, version: int) -> bool:
    """Whether a version is whole: metadata.json (written last) and every file it records, at the
    size it records. A listing, no content read: check_version compares the SHA-256s."""
    folder = place.path(str(version))
    try:
        record = json.loads(files.read_bytes_fs(place.fs, f"{folder}/{METADATA}"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    sizes = {i.base_name: i.size for i in children(place, folder) if i.type == pafs.FileType.File}
    # versions registered before sizes were recorded: the files it lists, present
    expected = record.get("sizes") or dict.fromkeys(record.get("files", []))
    return all(
        name in sizes and (size is None or sizes[name] == size) for name, size in expected.items()
    )


# Listings -----------------------------------------------------------------------------------------


def numbered(place: Place) -> list[int]:
    """The numbers of the version folders there are, complete or not, in order."""
    infos = children(place, place.base)
    return sorted(
        int(i.base_name)
        for i in infos
        if i.type == pafs.FileType.Directory and i.base_name.isdigit()
    )


def children(place: Place, folder: str, *, recursive: bool = False) -> list[pafs.FileInfo]:
    """The entries of `folder` (none when it does not exist).

    pyarrow's local listing looks at a folder twice (list it, then check whether it exists), so a
    folder another writer creates in between fails the listing with FileNotFoundError even with
    `allow_not_found`. Listing again sees it settled: there or not.
    """
    selector = pafs.FileSelector(folder, recursive=recursive, allow_not_found=True)
    for _ in range(LIST_TRIES - 1):
        with contextlib.suppress(FileNotFoundError):
            return list(place.fs.get_file_info(selector))
    return list(place.fs.get_file_info(selector))


def sweep(place: Place) -> None:
    """Remove what writers killed long ago left behind: staging folders and temp files."""
    cutoff = time.time() - STALE_AFTER_S
    gone = contextlib.suppress(FileNotFoundError)  # another writer swept or published it first
    for info in children(place, place.path(STAGING)):
        if info.type == pafs.FileType.Directory and _written_at(place, info) < cutoff:
            with gone:
                place.fs.delete_dir(info.path)
    for folder in (place.base, place.path(HISTORY)):
        for info in children(place, folder):
            stale = info.mtime is not None and info.mtime.timestamp() < cutoff
            if stale and info.base_name.endswith(".tmp") and info.type == pafs.FileType.File:
                with gone:
                    place.fs.delete_file(info.path)


def _written_at(place: Place, folder: pafs.FileInfo) -> float:
    """When a folder was last written to (object stores have no folder times: its newest file)."""
    if folder.mtime is not None:
        return float(folder.mtime.timestamp())
    inside = children(place, folder.path, recursive=True)  # not found: its writer published it
    times = [i.mtime.timestamp() for i in inside if i.mtime is not None]
    return max(times, default=time.time())  # an empty one may be a writer just starting


# Files --------------------------------------------------------------------------------------------


def copy(src_fs: pafs.FileSystem, src: str, dst_fs: pafs.FileSystem, dst: str) -> None:
    """Copy one file into the registry (from anywhere pyarrow reaches)."""
    if src_fs.get_file_info(src).type != pafs.FileType.File:
        raise RegistryError(f"{src}: no such file to copy into the registry")
    pafs.copy_files(
        src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs, use_threads=False
    )


def sha256(fs: pafs.FileSystem, path: str) -> str:
    """Of the staged copy, so a reader can check that a version's files are the ones written."""
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def exists(fs: pafs.FileSystem, path: str) -> bool:
    """A file or a folder is there."""
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def dumps(value: Any) -> bytes:
    """The JSON the registry writes (metadata, the pointer, history entries)."""
    return json.dumps(value, indent=1, sort_keys=True, default=str).encode()


def _fsync_tree(place: Place, folder: str) -> None:
    if not place.local:
        return
    for info in place.fs.get_file_info(pafs.FileSelector(folder, recursive=True)):
        if info.type == pafs.FileType.File:
            files.fsync(info.path)
    files.fsync_dir(folder)
