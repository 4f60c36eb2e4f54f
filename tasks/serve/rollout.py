"""What serves, in one room: the champion alias and the running app move together, and a
candidate can serve beside the champion (shadow or canary) until it is promoted or rolled back.

    direct(args, version=4, reason="driftloop deploy")      # the alias moves, the app swaps
    rollout = begin(args, candidate=4, mode="canary", share=0.1)   # beside the champion
    conclude(args, rollout, promote=True, reason="...", evidence={...})
    running(args)                                            # the rollout in progress, or None
    resolve_plan(args)                  # what the app serves now (tasks/serve/app.py)

The CLI's `deploy` and `rollback`, the training pipeline's promotion and the rollout flow all
come through here (flows/serving.py). Each alias move is a compare-and-set in the registry, and
the rollout's record lives in the registry beside the aliases (`registry.write_rollout`: one
running rollout a model, refused otherwise), so a restarted stack serves the same plan
(`app.resolve_plan`) and the next judgement resumes it. The app is swapped only where it runs on the
connected Ray; otherwise the next `driftloop up` serves `resolve_plan`.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Literal

from tasks import registry
from tasks.errors import DriftloopError
from tasks.serve.app import ServeArgs, resolve_plan
from tasks.serve.routing import MODES, Mode, Plan, describe

Status = Literal["running", "promoted", "rolled_back"]


class RolloutError(DriftloopError):
    """A rollout that cannot begin or end as asked; the message says why in one line."""


@dataclass(frozen=True)
class Rollout:
    """One rollout of a model: its candidate beside its champion, and how it ended."""

    id: str
    model: str
    mode: Mode
    champion: int
    candidate: int
    share: float
    started_at: str
    started_by: str = ""  # why it began: "driftloop deploy", a retraining's version
    status: Status = "running"
    reason: str | None = None  # why it ended
    ended_at: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)  # the judgement that ended it

    @property
    def plan(self) -> Plan:
        return Plan.of_rollout(self.to_dict())

    @property
    def started(self) -> datetime:
        return datetime.fromisoformat(self.started_at)

    def describe(self) -> str:
        return describe(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, record: dict[str, Any]) -> Rollout:
        return cls(**record)


def last(args: ServeArgs) -> Rollout | None:
    """The model's last rollout, running or ended."""
    record = registry.read_rollout(root=args.home, model=args.model)
    return None if record is None else Rollout.of(record)


def running(args: ServeArgs) -> Rollout | None:
    """The rollout in progress, None when there is none."""
    found = last(args)
    return found if found is not None and found.status == "running" else None


def direct(args: ServeArgs, *, version: int, reason: str, expect: int | None = None) -> int | None:
    """Make `version` the champion (a compare-and-set on `expect` when given) and serve it
    alone where the app runs; returns the previous champion. Refused while a rollout runs."""
    now = running(args)
    if now is not None:
        raise RolloutError(
            f"{args.model}: a {now.describe()}; it ends by itself, or `driftloop rollback` "
            "ends it now"
        )
    moved = registry.set_alias(root=args.home, model=args.model, alias=registry.CHAMPION,
                               version=version, reason=reason,
                               expect=registry.ANY if expect is None else expect)  # fmt: skip
    _serve(args, Plan(version=version))
    return moved.from_version


def begin(
    args: ServeArgs, *, candidate: int, mode: Mode, share: float, reason: str = "rollout"
) -> Rollout:
    """Serve `candidate` beside the champion (`mode`), recorded before the app swaps so a
    restarted stack serves the same; refused when a rollout already runs, when there is no
    champion, or when the candidate is the champion."""
    if mode not in MODES:
        raise RolloutError(f"rollout mode {mode!r}: use one of {', '.join(MODES)}")
    champion = registry.champion(root=args.home, model=args.model)
    if champion is None:
        raise RolloutError(f"{args.model}: no champion to roll v{candidate} out beside; "
                           f"`driftloop deploy --version {candidate}` serves it alone")  # fmt: skip
    if champion.version == candidate:
        raise RolloutError(f"{args.model}: v{candidate} is the champion already")
    registry.find(root=args.home, model=args.model, ref=candidate)  # an unknown one: refused
    rollout = Rollout(id=uuid.uuid4().hex, model=args.model, mode=mode, champion=champion.version,
                      candidate=candidate, share=share, started_at=_now(),
                      started_by=reason)  # fmt: skip
    try:
        registry.write_rollout(root=args.home, model=args.model, record=rollout.to_dict(),
                               running=None)  # fmt: skip
    except registry.RolloutConflict:
        now = running(args)
        shown = now.describe() if now else "another rollout"
        raise RolloutError(f"{args.model}: a {shown}; one rollout at a time") from None
    try:
        _serve(args, rollout.plan)
    except Exception as exc:  # the candidate never served: the rollout ends here
        conclude(args, rollout, promote=False, reason=f"it could not be served: {exc}")
        raise
    return rollout


def conclude(
    args: ServeArgs,
    rollout: Rollout,
    *,
    promote: bool,
    reason: str,
    evidence: dict[str, Any] | None = None,
) -> Rollout:
    """End the rollout: promoted (the champion alias moves to the candidate, a compare-and-set
    on the champion it was judged against) or rolled back; the app serves the winner alone.
    Raises `RolloutError` when the rollout is no longer the one running."""
    ended = replace(rollout, status="promoted" if promote else "rolled_back", reason=reason,
                    ended_at=_now(), evidence=evidence or {})  # fmt: skip
    now = running(args)
    if now is None or now.id != rollout.id:  # ended elsewhere: the alias must not move now
        shown = f"the {now.describe()}" if now else "none"
        raise RolloutError(f"{args.model}: the running rollout is {shown}, not {rollout.id}")
    champion = registry.champion(root=args.home, model=args.model)
    if promote and (champion is None or champion.version != rollout.candidate):
        try:
            registry.set_alias(root=args.home, model=args.model, alias=registry.CHAMPION,
                               version=rollout.candidate, expect=rollout.champion,
                               reason=f"{rollout.mode} promoted: {reason}")  # fmt: skip
        except registry.AliasMoved as exc:
            raise RolloutError(str(exc)) from None
    try:
        registry.write_rollout(root=args.home, model=args.model, record=ended.to_dict(),
                               running=rollout.id)  # fmt: skip
    except registry.RolloutConflict as exc:
        raise RolloutError(str(exc)) from None
    _serve(args, Plan(version=rollout.candidate if promote else rollout.champion))
    return ended


def serve_plan(args: ServeArgs) -> None:
    """Swap the app to what the registry says it should serve now (`app.resolve_plan`)."""
    _serve(args, resolve_plan(args))


def _serve(args: ServeArgs, plan: Plan) -> None:
    """Swap the app to `plan` where it runs on this process's Ray, or on the stack's Ray this
    process can join (the monitor concluding a rollout); else `up` serves it later."""
    from tasks import cluster
    from tasks.serve import control

    if plan.version is None or not cluster.join_configured_ray() or not control.is_running():
        return
    control.swap(args, version=plan.version, plan=plan)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
