"""The prediction log and the feedback labels: what serving writes and everything else reads.

    append(home=home, model="churn", kind="feedback", rows=labels)     # a Parquet file, atomically
    served = read(home=home, model="churn", kind="predictions", columns=[...], since=...)
    spool = Spool(spool_folder(home, "churn"))                           # a replica's answers
    convert_closed(home=home, model="churn")                            # segments -> Parquet

The package, bottom up: `layout` (the Parquet layout under the home, request ids that say when,
the look-up of logged ids, the one rule for labels), `spool` (each replica's append-only segments,
written before an answer leaves, and their conversion to the layout), `upkeep` (a day's files
compacted into one, old days and reports retired, what the log takes up). This is the face.
"""

from tasks.traffic.layout import (
    CATEGORY_TYPE,
    FILE,
    LATENCY_MS,
    MODEL_VERSION,
    NUMERIC_TYPE,
    PREDICTED_AT,
    PREDICTION,
    PROBABILITY,
    RECEIVED_AT,
    REQUEST_ID,
    Kind,
    TrafficError,
    append,
    as_source,
    feature_types,
    file_span,
    id_millisecond,
    labelled,
    location,
    log_files,
    logged_ids,
    new_request_ids,
    newest_labels,
    read,
    write_day_file,
)
from tasks.traffic.spool import (
    Answered,
    Fsync,
    SegmentIds,
    Spool,
    SpoolError,
    answered,
    convert,
    convert_closed,
    segments,
    spool_folder,
    spooled,
)
from tasks.traffic.upkeep import Usage, compact, retire, usage

__all__ = [
    "CATEGORY_TYPE",
    "FILE",
    "LATENCY_MS",
    "MODEL_VERSION",
    "NUMERIC_TYPE",
    "PREDICTED_AT",
    "PREDICTION",
    "PROBABILITY",
    "RECEIVED_AT",
    "REQUEST_ID",
    "Answered",
    "Fsync",
    "Kind",
    "SegmentIds",
    "Spool",
    "SpoolError",
    "TrafficError",
    "Usage",
    "answered",
    "append",
    "as_source",
    "compact",
    "convert",
    "convert_closed",
    "feature_types",
    "file_span",
    "id_millisecond",
    "labelled",
    "location",
    "log_files",
    "logged_ids",
    "new_request_ids",
    "newest_labels",
    "read",
    "retire",
    "segments",
    "spool_folder",
    "spooled",
    "usage",
    "write_day_file",
]
