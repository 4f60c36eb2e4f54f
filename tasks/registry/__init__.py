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
- aliases.json is replaced in one step (rename, or one PUT: `files.write_atomic_fs`), so readers
  see the old or the new pointer, never a mix. Readers trust history only up to its `seq`: an
  entry left by a writer killed between writing it and swapping the pointer is ignored, then
  overwritten by the next move.
- Every read-modify-write (publishing a version, each alias move, rollback) holds the model's
  lock, so concurrent promotions queue, `set_alias(expect=...)` is a true compare-and-set, and the
  history records every move. Reads take no lock.

The modules: `api` (this face), `store` (the place on a file system, publishing, listings,
sweeping), `lock` (flock on local homes, a Prefect global concurrency limit on buckets).
"""

from tasks.registry.api import (
    ANY,
    CHAMPION,
    MODEL_FILES,
    Action,
    AliasChange,
    AliasMoved,
    RolloutConflict,
    VersionRef,
    aliases,
    champion,
    check_version,
    code_version,
    find,
    get_version,
    history,
    list_versions,
    read_rollout,
    register,
    resolve,
    rollback,
    set_alias,
    trained_on,
    write_rollout,
)
from tasks.registry.store import ALIASES, HISTORY, METADATA, PathOrUri, RegistryError

__all__ = [
    "ALIASES",
    "ANY",
    "CHAMPION",
    "HISTORY",
    "METADATA",
    "MODEL_FILES",
    "Action",
    "AliasChange",
    "AliasMoved",
    "PathOrUri",
    "RegistryError",
    "RolloutConflict",
    "VersionRef",
    "aliases",
    "champion",
    "check_version",
    "code_version",
    "find",
    "get_version",
    "history",
    "list_versions",
    "read_rollout",
    "register",
    "resolve",
    "rollback",
    "set_alias",
    "trained_on",
    "write_rollout",
]
