"""The rollout's record and its refusals, without Serve: each says what is wrong in one line and
changes nothing (tasks/serve/rollout.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import register_champion, train_quick

from tasks import registry, synthetic
from tasks.serve import ServeArgs, rollout


@pytest.fixture(scope="module")
def args(tmp_path_factory: pytest.TempPathFactory) -> ServeArgs:
    root = tmp_path_factory.mktemp("record")
    table = synthetic.generate(rows=1_000, seed=3)
    predictor = train_quick(table, steps=20)
    for i in (1, 2):  # v1, then v2 the champion
        register_champion(
            root / "home", predictor, holdout=table, reference=table, tmp=root / f"m{i}"
        )
    return ServeArgs(home=str(root / "home"), model="churn")


def test_no_champion_or_the_champion_itself_cannot_be_rolled_out(
    args: ServeArgs, tmp_path: Path
) -> None:
    nobody = ServeArgs(home=str(tmp_path / "empty"), model="churn")
    with pytest.raises(rollout.RolloutError, match="no champion to roll v1 out beside"):
        rollout.begin(nobody, candidate=1, mode="canary", share=0.1)
    with pytest.raises(rollout.RolloutError, match="v2 is the champion already"):
        rollout.begin(args, candidate=2, mode="canary", share=0.1)
    with pytest.raises(rollout.RolloutError, match="rollout mode 'blue-green': use one of"):
        rollout.begin(args, candidate=1, mode="blue-green", share=0.1)  # type: ignore[arg-type]
    assert rollout.last(args) is None  # nothing was recorded


def test_while_a_rollout_runs_a_direct_deploy_is_refused_and_it_ends_once(args: ServeArgs) -> None:
    started = rollout.begin(args, candidate=1, mode="shadow", share=0.1)
    with pytest.raises(rollout.RolloutError, match="a shadow of v1 beside v2, running since"):
        rollout.direct(args, version=1, reason="test")
    assert registry.champion(root=args.home, model="churn").version == 2  # type: ignore[union-attr]
    ended = rollout.conclude(args, started, promote=False, reason="test: enough")
    assert (ended.status, ended.reason) == ("rolled_back", "test: enough")
    with pytest.raises(rollout.RolloutError, match="the running rollout is none"):
        rollout.conclude(args, started, promote=True, reason="again")
    assert registry.champion(root=args.home, model="churn").version == 2  # type: ignore[union-attr]
    assert rollout.running(args) is None
