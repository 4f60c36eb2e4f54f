"""Files under a path or a URI, through `pyarrow.fs`, and the names of the files the stages share.

    fs, path = resolve("s3://bucket/home?endpoint_override=...")
    write_atomic(join(home, "reports", "x.json"), text)   # a reader never sees half of it

A leaf: it imports nothing of driftloop's but its errors, so every layer may use it. The one
atomic write lives here: locally a temp file beside the target, flushed, then renamed over it (and
the folder flushed); on an object store one PUT, which is atomic there by itself.
"""

from __future__ import annotations

import contextlib
import os
import uuid

import pyarrow as pa
import pyarrow.fs as pafs

from tasks.errors import DataError

# The model directory (tasks/model.py writes it; the registry copies it into each version)
WEIGHTS, PREPROCESSING, MODEL_JSON = "weights.safetensors", "preprocessing.json", "model.json"
MODEL_FILES = (WEIGHTS, PREPROCESSING, MODEL_JSON)
# What else a registry version holds beside the model directory
METADATA = "metadata.json"
REFERENCE = "reference.parquet"  # a training sample: the next validation profile, drift reference
TRAINED_ON = "trained_on.parquet"  # request ids of the labelled production rows it trained on
EVALUATION, GATE, MODEL_CARD = "evaluation.json", "gate.json", "model_card.md"
# A validation report folder (reports/<dataset>/<fingerprint>/); the suite and card go to versions
SUITE, VALIDATION_JSON, VALIDATION_HTML = "suite.json", "validation.json", "validation.html"
DATASET_CARD = "dataset_card.md"


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """The file system and path behind a local path or a URI (file://, s3://, gs://)."""
    if "://" not in location:
        return pafs.LocalFileSystem(), str(location)
    try:
        return pafs.FileSystem.from_uri(location)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise DataError(f"{location}: cannot open this URI: {first_line(exc)}") from None


def join(location: str, *parts: str) -> str:
    """`location/part/...` for a path or a URI; a URI keeps its options (`?endpoint_override=`)
    at the end, so the joined location opens the same store."""
    base, mark, query = location.partition("?") if "://" in location else (location, "", "")
    return "/".join([base.rstrip("/"), *parts]) + mark + query


def is_local(fs: pafs.FileSystem) -> bool:
    """A local disk (where a rename is atomic), not an object store."""
    return isinstance(fs, pafs.LocalFileSystem)


def write_atomic(location: str | os.PathLike[str], content: bytes | str) -> str:
    """Write `content` to a path or URI so that a reader sees the old file or the new one, never
    half of one; returns `location`."""
    fs, path = resolve(os.fspath(location))
    write_atomic_fs(fs, path, content)
    return os.fspath(location)


def write_atomic_fs(fs: pafs.FileSystem, path: str, content: bytes | str) -> None:
    """`write_atomic` on a file system already resolved (the registry holds one per model)."""
    body = content.encode("utf-8") if isinstance(content, str) else content
    if not is_local(fs):  # one PUT is atomic; a "rename" there would be a copy and a delete
        _write(fs, path, body)
        return
    path = os.path.abspath(path)  # so that a bare file name has a folder to write beside
    folder, name = path.rsplit("/", 1)
    fs.create_dir(folder, recursive=True)
    tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        _write(fs, tmp, body)
        fsync(tmp)
        fs.move(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise
    fsync_dir(folder)


def read_bytes(location: str) -> bytes:
    """The whole file at a path or URI.

    Raises:
        FileNotFoundError: there is no file there.
    """
    fs, path = resolve(location)
    return read_bytes_fs(fs, path)


def read_bytes_fs(fs: pafs.FileSystem, path: str) -> bytes:
    """`read_bytes` on a file system already resolved."""
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(path)
    with fs.open_input_stream(path) as stream:
        return bytes(stream.read())


def read_text(location: str) -> str:
    return read_bytes(location).decode("utf-8")


def exists(location: str) -> bool:
    """A file (not a folder) is at the path or URI."""
    fs, path = resolve(location)
    return bool(fs.get_file_info(path).type == pafs.FileType.File)


def fsync(path: str) -> None:
    """Flush a local file to disk, so a rename that publishes it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):  # some file systems refuse fsync on folders
        fsync(path)


def first_line(exc: BaseException) -> str:
    """An exception's first line, or its type's name when it has no message."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _write(fs: pafs.FileSystem, path: str, body: bytes) -> None:
    with fs.open_output_stream(path) as out:
        out.write(body)
