"""The learning-rate schedule, and how many steps fit in a time budget.

Pure arithmetic (no torch): `LinearSchedule` is the factor on --train.lr that `torch.optim.lr_scheduler.LambdaLR`
applies per step, `steps_that_fit` what `sentilora.train` plans with when --train.max_minutes is set.
"""

from __future__ import annotations


class LinearSchedule:
    """Linear warm-up, then linear decay to 0: the factor on --train.lr for step `s`.

    Not `transformers.get_linear_schedule_with_warmup`: that one gives s / warmup during warm-up
    (lr 0 at step 0, a wasted step), ours (s + 1) / warmup; the decay is the same. Switching would
    change every trained result, the README's measured accuracies included, for no gain.

    With --train.max_minutes the run may end long before `total` steps; `replan` then moves the end
    of the decay to the steps that fit (as often as the measured step rate changes, never past the
    first plan), so the learning rate still reaches 0 when time runs out. A callable object rather
    than a function, so LambdaLR saves the plan in every checkpoint.
    """

    def __init__(self, warmup: int, total: int, ratio: float = 0.0) -> None:
        self.warmup, self.total, self.ratio = warmup, total, ratio
        self.planned = total  # the first plan: a replan can shorten the run, or lengthen it up to this
        self.from_step: int | None = None  # decay restarts here (at from_factor) after a replan
        self.from_factor = 1.0
        self.replanned = False

    def __call__(self, s: int) -> float:
        if s < self.warmup:
            return (s + 1) / max(1, self.warmup)
        if self.from_step is not None:
            return max(0.0, self.from_factor * (self.total - s) / max(1, self.total - self.from_step))
        return max(0.0, (self.total - s) / max(1, self.total - self.warmup))

    def replan(self, step: int, total: int) -> None:
        """End the schedule at `total` steps (at most the first plan), continuing smoothly from `step`."""
        self.replanned = True
        total = min(max(total, step + 1), getattr(self, "planned", self.total))  # checkpoints from before: no `planned`
        if total == self.total:
            return
        warmup = int(self.ratio * total)
        if step < warmup:  # still warming up: a shorter warm-up for the shorter run
            self.warmup, self.total = warmup, total
            return
        self.from_factor, self.from_step = self(step), step
        self.warmup, self.total = min(self.warmup, step), total


def steps_that_fit(step: int, *, per_step: float, seconds_left: float, steps_per_epoch: int, validation_s: float) -> int:
    """The step the run can reach in `seconds_left`, at `per_step` seconds a step and `validation_s` per epoch end."""
    fit, left = step, seconds_left
    while left > 0:
        epoch_steps = steps_per_epoch - (fit % steps_per_epoch)
        take = min(epoch_steps, int(left / per_step))
        fit, left = fit + take, left - take * per_step - validation_s
        if take < epoch_steps:
            break
    return fit
