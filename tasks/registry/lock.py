"""The lock every read-modify-write of a model's registry holds: publishing, alias moves, rollback.

    with lock.hold(place):   # concurrent promotions queue; `set_alias(expect=...)` is a true CAS
        ...

Local homes: `fcntl.flock` on `<root>/registry/<model>/.lock`, released on close or by the kernel
when a holder dies.

Object stores (a home shared by a team as a bucket) have no lock of their own: through pyarrow
there is no conditional put. The lock is the Prefect global concurrency limit `registry-<model>`
(limit 1, created when missing) on the Prefect server every driftloop process already talks to:
writes refuse with a RegistryError when PREFECT_API_URL is unset (a per-process temporary server
would exclude no one). It is held with a 60 s lease that Prefect renews every 45 s; a holder that
cannot renew is cancelled before its lease ends, and a killed holder's lease lapses within about
75 s, after which others proceed (a writer queues up to 10 min, then gets a RegistryError).
Writers of one model name share the limit, whichever home they write to.

Publishing does not rely on the lock alone (see `store.claim`). Alias moves take milliseconds and
do: only a writer frozen for longer than its lease (a stopped VM) could overlap another's move,
and then the pointer stays whole but one move may overwrite the other unrecorded.

Prefect is imported when a bucket home is locked, never at import time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tasks.registry.store import Place, RegistryError

LOCK_FILE = ".lock"
LEASE_S = 60  # the shortest lease a Prefect server grants: a dead holder blocks others ~75 s
LOCK_WAIT_S = 600  # how long a writer queues behind others on a shared home before giving up


@contextlib.contextmanager
def hold(place: Place) -> Iterator[None]:
    """An exclusive lock on the model's registry: flock locally, Prefect on shared stores."""
    if not place.local:
        with _prefect_lock(place):
            yield
        return
    import fcntl

    Path(place.base).mkdir(parents=True, exist_ok=True)
    with open(place.path(LOCK_FILE), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released on close, or by the kernel if we die
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prefect_api_url(place: Place) -> str:
    """The Prefect API that serialises writers to a shared home; refuse without one."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise RegistryError(
            f"{place.model}: writing the registry on {place.uri(place.base)} needs the team's "
            "Prefect server to serialise writers: set PREFECT_API_URL (e.g. http://HOST:4200/api)"
        )
    return str(url)


@contextlib.contextmanager
def _prefect_lock(place: Place) -> Iterator[None]:
    """Hold the Prefect global concurrency limit `registry-<model>` (limit 1, made if missing)."""
    url = prefect_api_url(place)
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    name = f"registry-{place.model}"
    _ensure_limit(place, name=name, url=url)
    held = contextlib.ExitStack()
    try:  # strict: a missing limit or a lease that cannot be renewed stops the writer
        held.enter_context(
            concurrency(name, timeout_seconds=LOCK_WAIT_S, lease_duration=LEASE_S, strict=True)
        )
    except TimeoutError:
        raise RegistryError(
            f"{place.model}: another writer has held the Prefect limit {name!r} for over "
            f"{LOCK_WAIT_S} s; try again later"
        ) from None
    except ConcurrencySlotAcquisitionError as exc:
        raise RegistryError(
            f"{place.model}: cannot take the Prefect limit {name!r}: {exc}"
        ) from None
    with held:
        yield


def _ensure_limit(place: Place, *, name: str, url: str) -> None:
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
