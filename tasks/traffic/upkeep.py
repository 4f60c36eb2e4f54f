"""Keeping the log small: a day's files compacted into one, old days and reports retired.

    compact(home=home, model="churn", kind="predictions", before=date(2026, 12, 6))
    retire(home=home, model="churn", days=90)       # the log, the labels, the monitor's reports
    usage(home=home, model="churn")                 # files, bytes, days, spool segments

A replica writes a file per segment (every `serving.log_flush_seconds`), so a busy day holds
thousands; `compact` rewrites a day that no writer touches any more as one file sorted by request
id, so a look-up reads one row group of it. It is safe to read through: the compacted file names
the files it replaces in its own footer (`driftloop.replaces`), and it appears in one atomic
rename, so a reader sees the old files or the new one, never both (`layout.read` skips replaced
files); the old ones go after. The scheduled monitor runs both (flows/monitoring.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tasks import files
from tasks.traffic.layout import (
    COMPACTED,
    KINDS,
    RECEIVED_AT,
    REPLACES,
    REQUEST_ID,
    SORTED_ROW_GROUP,
    Kind,
    location,
    log_files,
    write_day_file,
)
from tasks.traffic.spool import segments, spool_folder


@dataclass(frozen=True)
class Usage:
    """What a model's prediction log and labels take up."""

    files: int
    bytes: int
    days: int
    spool_segments: int

    def describe(self) -> str:
        return (
            f"{self.files:,} files, {self.bytes / 2**20:.1f} MiB over {self.days} day(s); "
            f"{self.spool_segments} spool segment(s) not converted yet"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "bytes": self.bytes, "days": self.days,
                "spool_segments": self.spool_segments}  # fmt: skip


def compact(*, home: str, model: str, kind: Kind, before: date) -> int:
    """Rewrite each day folder before `before` that holds more than one live file as one file
    (rows sorted by request id); returns the days compacted."""
    done = 0
    for day, found in _days(home, model, kind).items():
        if date.fromisoformat(day) >= before or len(found) < 2:
            continue
        found = sorted(found, key=lambda f: _arrival(f.rsplit("/", 1)[-1]))  # arrival order
        fs, _ = files.resolve(found[0])
        table = pa.concat_tables(
            [pq.read_table(files.resolve(f)[1], filesystem=fs) for f in found],
            promote_options="permissive",
        )
        order = [(REQUEST_ID, "ascending")]
        if RECEIVED_AT in table.column_names:
            order.append((RECEIVED_AT, "ascending"))
        names = sorted(f.rsplit("/", 1)[-1] for f in found)
        replaces = {REPLACES: json.dumps(names).encode()}
        table = table.sort_by(order).replace_schema_metadata(  # a stable sort: ties keep arrival
            {**(table.schema.metadata or {}), **replaces}
        )
        base = location(home=home, model=model, kind=kind)
        last = _arrival(found[-1].rsplit("/", 1)[-1]).removesuffix(".parquet")
        name = last + COMPACTED.removesuffix(".parquet")  # it sorts as the newest it replaces
        write_day_file(base, day=day, rows=table, name=name, row_group_size=SORTED_ROW_GROUP)
        for old in found:  # after the compacted file is in place: a reader skips them already
            _remove(old)
        done += 1
    return done


def retire(*, home: str, model: str, days: float, now: datetime | None = None) -> int:
    """Remove the log's and the labels' day folders, and the monitor's report folders, older
    than `days`; returns the folders removed."""
    now = now or datetime.now(timezone.utc)
    cutoff = (now - timedelta(days=days)).date()
    removed = 0
    for kind in KINDS:
        fs, base = files.resolve(location(home=home, model=model, kind=kind))
        for day in _days(home, model, kind):
            if date.fromisoformat(day) < cutoff:
                fs.delete_dir(f"{base}/date={day}")
                removed += 1
    reports = files.join(home, "reports", model, "monitor")
    fs, base = files.resolve(reports)
    if fs.get_file_info(base).type == pafs.FileType.Directory:
        for info in fs.get_file_info(pafs.FileSelector(base)):
            stamp = _report_time(info.base_name)
            if info.type == pafs.FileType.Directory and stamp is not None and stamp.date() < cutoff:
                fs.delete_dir(info.path)
                removed += 1
    return removed


def usage(*, home: str, model: str) -> Usage:
    """Files, bytes and days of the model's log and labels, and its unconverted segments."""
    count, size, days = 0, 0, set()
    for kind in ("predictions", "feedback"):
        fs, base = files.resolve(location(home=home, model=model, kind=kind))
        if fs.get_file_info(base).type != pafs.FileType.Directory:
            continue
        for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
            if info.type == pafs.FileType.File and info.base_name.endswith(".parquet"):
                count, size = count + 1, size + (info.size or 0)
                days.add(info.path.rsplit("/", 2)[-2])
    spooled = len(segments(spool_folder(home, model)))
    return Usage(files=count, bytes=size, days=len(days), spool_segments=spooled)


def _days(home: str, model: str, kind: Kind) -> dict[str, list[str]]:
    """Each day folder's live files (replaced ones left out), by day."""
    by_day: dict[str, list[str]] = {}
    for path in log_files(home=home, model=model, kind=kind):
        day = path.rsplit("/", 2)[-2].removeprefix("date=")
        by_day.setdefault(day, []).append(path)
    return by_day


def _remove(location: str) -> None:
    fs, path = files.resolve(location)
    fs.delete_file(path)


def _arrival(name: str) -> str:
    """The part of a log file's name after its time span: for labels, the writer's clock."""
    return name.split("-", 2)[-1]


def _report_time(name: str) -> datetime | None:
    try:
        return datetime.strptime(name, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
