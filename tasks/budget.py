"""How long a training run trains: a step budget fixed once from the training rows.

    budget = plan_budget(rows=train.num_rows, config=LoopTraining.of(settings.training))
    budget.total_steps, budget.eval_every, budget.per_worker_batch(world_size=2)

Epochs alone do not fit every table: 256-row batches give a table of a few hundred rows one or
two optimizer steps an epoch, so 20 epochs are a few dozen steps and the model never converges.
The budget is counted in optimizer steps instead, from the number of TRAINING rows and the global
batch only, never from the worker count, so 1 and N workers take exactly the same steps:

- global batch = min(batch_size, rows); each of N workers takes global // N rows a step;
- steps_per_epoch = ceil(rows / global batch);
- total_steps = max(epochs * steps_per_epoch, min_steps), capped by max_steps when set;
- an evaluation round (validate, checkpoint, report) every
  max(steps_per_epoch, ceil(total_steps / max_evaluations)) steps: at least an epoch apart, at
  most `max_evaluations` rounds;
- the learning rate: linear warm-up over `warmup_share` of the steps, then cosine decay to
  `min_lr_share` of the peak (`lr_factor`).

Plain Python: the driver and every Ray Train worker compute the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


class BudgetSettings(Protocol):
    """What the budget reads of the training settings (`tasks.loop.LoopTraining` has it)."""

    @property
    def epochs(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def min_steps(self) -> int: ...
    @property
    def max_steps(self) -> int | None: ...
    @property
    def max_evaluations(self) -> int: ...
    @property
    def warmup_share(self) -> float: ...


@dataclass(frozen=True)
class Budget:
    """A run's optimizer steps, evaluation rounds and warm-up: the same on 1 or N workers."""

    rows: int  # training rows
    global_batch: int  # rows per optimizer step over all workers
    steps_per_epoch: int  # steps for one pass over the training rows
    total_steps: int
    eval_every: int  # steps between evaluation rounds (the last round may be shorter)
    warmup_steps: int

    @property
    def rounds(self) -> int:
        """Evaluation rounds in the whole budget (early stopping may end the run before)."""
        return -(-self.total_steps // self.eval_every)

    @property
    def epochs(self) -> float:
        """Passes over the training rows the whole budget makes."""
        return self.total_steps / self.steps_per_epoch

    def round_end(self, round_: int) -> int:
        """The step count after evaluation round `round_` (1-based)."""
        return min(round_ * self.eval_every, self.total_steps)

    def per_worker_batch(self, world_size: int) -> int:
        """Each worker's rows a step; a worker holds at least rows // world_size rows."""
        return max(1, self.global_batch // max(1, world_size))


def plan_budget(*, rows: int, config: BudgetSettings) -> Budget:
    """The budget for `rows` training rows; see the module docstring for the rules."""
    rows = max(1, rows)
    batch = max(1, min(config.batch_size, rows))
    per_epoch = -(-rows // batch)
    total = max(config.epochs * per_epoch, config.min_steps, 1)
    if config.max_steps is not None:
        total = max(1, min(total, config.max_steps))
    every = max(per_epoch, -(-total // max(1, config.max_evaluations)))
    every = min(every, total)
    warmup = min(total - 1, round(config.warmup_share * total)) if total > 1 else 0
    return Budget(rows, batch, per_epoch, total, every, max(0, warmup))


def lr_factor(step: int, budget: Budget, *, min_lr_share: float) -> float:
    """The share of the peak learning rate for 0-based optimizer step `step`.

    Linear warm-up from 1/warmup_steps to 1 over the first `warmup_steps` steps, then a cosine
    from 1 down to `min_lr_share` at the last step.
    """
    if step < budget.warmup_steps:
        return (step + 1) / budget.warmup_steps
    span = budget.total_steps - budget.warmup_steps
    progress = (step - budget.warmup_steps) / (span - 1) if span > 1 else 0.0
    return min_lr_share + (1 - min_lr_share) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
