"""What serves, as flows in the Prefect UI: deploy a version, roll back, roll a candidate out.

    deploy(config="driftloop.yaml", version=4)                  # at once (serving.rollout)
    deploy(config="driftloop.yaml", version=4, mode="canary")   # beside the champion, judged
    rollout(config="driftloop.yaml", candidate=4, mode="shadow")
    rollback(config="driftloop.yaml")       # ends a running rollout, else the previous champion

`driftloop deploy` / `rollback`, the training pipeline's promotion and the monitor's resumption
of a rollout after a restart all come here, and from here to `tasks/serve/rollout.py`: the
alias moves by compare-and-set and the app swaps in the same step. A rollout judges every
`rollout.check_seconds` (tasks/monitor/canary.py) until the candidate is promoted or rolled
back: a Prefect event (`driftloop.rollout.promoted` / `rolled_back`), an artifact of the
evidence (`rollout-<model>`), and `driftloop status` says so.
"""

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.naming import run_name
from tasks import registry
from tasks.monitor import begin_rollout_task, conclude_rollout_task, judge_rollout_task
from tasks.serve.routing import MODES, Mode
from tasks.settings import Settings, load_settings

Policy = str  # "direct", "shadow" or "canary" (serving.rollout)


@flow(name="deploy", flow_run_name=run_name("deploy"))
def deploy(
    config: str = "driftloop.yaml", version: int | None = None, mode: Policy | None = None
) -> dict[str, Any]:
    """Serve `version`: at once (`direct`), or beside the champion as a `shadow` or `canary`
    until the judgement ends it (`serving.rollout` when no mode is given)."""
    settings = load_settings(Path(config), check_source=False)
    policy = mode or settings.serving.rollout
    if version is None:
        raise ValueError("deploy needs a version")
    if policy == "direct":
        return serve_directly(settings, version=version, reason="driftloop deploy")
    return rollout(config=config, candidate=version, mode=_mode(policy), reason="driftloop deploy")


@flow(name="rollout", flow_run_name=run_name("rollout"))
def rollout(
    config: str = "driftloop.yaml",
    candidate: int = 0,
    mode: str = "canary",
    reason: str = "rollout",
    max_checks: int | None = None,
) -> dict[str, Any]:
    """Serve `candidate` beside the champion (or resume its running rollout) and judge it every
    `rollout.check_seconds` until it is promoted or rolled back (`max_checks`: give up waiting
    after that many judgements, leaving it running for the monitor to go on with)."""
    settings = load_settings(Path(config), check_source=False)
    state = begin_rollout_task(settings, candidate=candidate, mode=_mode(mode), reason=reason)
    checks = 0
    while True:
        verdict = judge_rollout_task(settings, state)
        checks += 1
        if verdict.decision != "continue":
            return _summary(_conclude(settings, state, verdict), settings)
        if max_checks is not None and checks >= max_checks:
            return _summary(state.to_dict(), settings)
        time.sleep(settings.rollout.check_seconds)


def judge_running(settings: Settings) -> dict[str, Any] | None:
    """One judgement of a running rollout, concluded when decided (the scheduled monitor calls
    this: a rollout whose flow stopped with the stack goes on). None when none runs."""
    from tasks.serve import ServeArgs
    from tasks.serve import rollout as rollouts

    state = rollouts.running(ServeArgs.of(settings))
    if state is None:
        return None
    verdict = judge_rollout_task(settings, state)
    record = (
        state.to_dict() if verdict.decision == "continue" else _conclude(settings, state, verdict)
    )
    return {**_summary(record, settings), "judgement": verdict.reason}


def _conclude(settings: Settings, state: Any, verdict: Any) -> dict[str, Any]:
    """Promote or roll back as judged; the record as it ended (here, or elsewhere meanwhile:
    the monitor and the rollout's own flow may both judge it, and one of them concludes)."""
    from tasks.serve import ServeArgs
    from tasks.serve import rollout as rollouts

    try:
        ended = conclude_rollout_task(settings, state, promote=verdict.decision == "promote",
                                      reason=verdict.reason, verdict=verdict)  # fmt: skip
    except rollouts.RolloutError as exc:
        get_run_logger().info("the rollout ended elsewhere: %s", exc)
        last = rollouts.last(ServeArgs.of(settings))
        return last.to_dict() if last is not None else state.to_dict()
    return ended.to_dict()


@flow(name="rollback", flow_run_name=run_name("rollback"))
def rollback(config: str = "driftloop.yaml") -> dict[str, Any]:
    """End a running rollout (its champion serves alone), else give the champion alias back to
    the previous champion and serve it."""
    from tasks.serve import ServeArgs
    from tasks.serve import rollout as rollouts

    settings = load_settings(Path(config), check_source=False)
    args = ServeArgs.of(settings)
    running = rollouts.running(args)
    if running is not None:
        ended = conclude_rollout_task(settings, running, promote=False,
                                      reason="rolled back by hand")  # fmt: skip
        return _summary(ended.to_dict(), settings)
    change = registry.rollback(root=settings.home, model=settings.dataset.name)
    rollouts.serve_plan(args)
    get_run_logger().info("champion: v%s -> v%s", change.from_version, change.to_version)
    return {"model": settings.dataset.name, "status": "rolled_back",
            "champion": change.to_version, "previous": change.from_version}  # fmt: skip


def serve_directly(settings: Settings, *, version: int, reason: str) -> dict[str, Any]:
    """The champion alias to `version` and the app serving it alone, in one step."""
    from tasks.serve import ServeArgs
    from tasks.serve import rollout as rollouts

    previous = rollouts.direct(ServeArgs.of(settings), version=version, reason=reason)
    get_run_logger().info("champion: v%s -> v%s", previous, version)
    return {"model": settings.dataset.name, "status": "promoted", "champion": version,
            "previous": previous}  # fmt: skip


def _summary(record: dict[str, Any], settings: Settings) -> dict[str, Any]:
    champion = registry.champion(root=settings.home, model=settings.dataset.name)
    keep = ("mode", "champion", "candidate", "share", "status", "reason", "started_at", "ended_at")
    return {"model": settings.dataset.name, **{k: record.get(k) for k in keep},
            "serving": champion.version if champion else None}  # fmt: skip


def _mode(policy: str) -> Mode:
    if policy not in MODES:
        raise ValueError(f"rollout mode {policy!r}: use direct, {' or '.join(MODES)}")
    return policy
