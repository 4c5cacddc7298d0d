"""Learning-rate schedules: ``schedule(step) -> lr``.

Schedules count OPTIMIZER STEPS (batches), not epochs: an optimizer built
with ``lr=schedule`` uses ``schedule(optimizer.iterations)`` for its next
step, so the first step uses ``schedule(0)``. To think in epochs, convert:

    per_epoch = steps_per_epoch(len(x_train), batch_size)       # ceil(N / B)
    CosineDecay(0.1, total_steps=epochs_to_steps(30, per_epoch))
    StepDecay(0.1, step_size=epochs_to_steps(10, per_epoch), gamma=0.1)

    StepDecay(lr, step_size, gamma=0.1)    lr * gamma ** (step // step_size)  (torch StepLR)
    ExponentialDecay(lr, gamma)            lr * gamma ** step                 (torch ExponentialLR)
    CosineDecay(lr, total_steps, min_lr=0) min_lr + (lr - min_lr) (1 + cos(pi t / T)) / 2,
                                           t = min(step, T), then min_lr      (torch
                                           CosineAnnealingLR's closed form, T = T_max)
    WarmUp(schedule_or_lr, warmup_steps)   target(0) * (step + 1) / W for step < W, then
                                           target(step - W): the wrapped schedule starts
                                           counting where the warm-up ends

Every schedule has ``get_config()`` (a JSON-able dict naming its class) and
``from_config(config)`` rebuilds it, so optimizers save and restore them. A
plain Python callable also works as an optimizer's lr but cannot be saved.
"""
from __future__ import annotations

import math

import numpy as np


def _number(owner, name, value, low=0.0, low_open=True):
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value) and (value > low if low_open else value >= low)
    if not ok:
        raise ValueError(f"{owner}: {name} must be a finite number {'>' if low_open else '>='} "
                         f"{low}, got {value!r}")
    return float(value)


def _count(owner, name, value, low=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{owner}: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def steps_per_epoch(n_samples, batch_size=None) -> int:
    """Optimizer steps in one epoch of n_samples at batch_size (None: full batch),
    as the Trainer takes them: ceil(n_samples / batch_size)."""
    n = _count("steps_per_epoch", "n_samples", n_samples)
    if batch_size is None:
        return 1
    return -(-n // _count("steps_per_epoch", "batch_size", batch_size))


def epochs_to_steps(epochs, steps_per_epoch) -> int:
    """epochs * steps_per_epoch, for giving a schedule its lengths in epochs."""
    return (_count("epochs_to_steps", "epochs", epochs, low=0)
            * _count("epochs_to_steps", "steps_per_epoch", steps_per_epoch))


class Schedule:
    """A learning rate as a function of the optimizer steps taken (0, 1, ...)."""

    def __call__(self, step) -> float:
        return self.rate(_count(type(self).__name__, "step", step, low=0))

    def rate(self, step: int) -> float:
        raise NotImplementedError

    def get_config(self) -> dict:
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "class")
        return f"{type(self).__name__}({args})"


class StepDecay(Schedule):
    """lr * gamma ** (step // step_size)."""

    def __init__(self, lr, step_size, gamma=0.1):
        self.lr = _number("StepDecay", "lr", lr)
        self.step_size = _count("StepDecay", "step_size", step_size)
        self.gamma = _number("StepDecay", "gamma", gamma)

    def rate(self, step):
        return self.lr * self.gamma ** (step // self.step_size)

    def get_config(self):
        return {"class": "StepDecay", "lr": self.lr, "step_size": self.step_size,
                "gamma": self.gamma}


class ExponentialDecay(Schedule):
    """lr * gamma ** step."""

    def __init__(self, lr, gamma):
        self.lr = _number("ExponentialDecay", "lr", lr)
        self.gamma = _number("ExponentialDecay", "gamma", gamma)

    def rate(self, step):
        return self.lr * self.gamma ** step

    def get_config(self):
        return {"class": "ExponentialDecay", "lr": self.lr, "gamma": self.gamma}


class CosineDecay(Schedule):
    """min_lr + (lr - min_lr) * (1 + cos(pi * min(step, total_steps) / total_steps)) / 2:
    lr at step 0, min_lr from step total_steps on."""

    def __init__(self, lr, total_steps, min_lr=0.0):
        self.lr = _number("CosineDecay", "lr", lr)
        self.total_steps = _count("CosineDecay", "total_steps", total_steps)
        self.min_lr = _number("CosineDecay", "min_lr", min_lr, low_open=False)
        if self.min_lr > self.lr:
            raise ValueError(f"CosineDecay: min_lr must not exceed lr, got min_lr={min_lr!r} "
                             f"and lr={lr!r}")

    def rate(self, step):
        t = min(step, self.total_steps)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (
            1.0 + math.cos(math.pi * t / self.total_steps))

    def get_config(self):
        return {"class": "CosineDecay", "lr": self.lr, "total_steps": self.total_steps,
                "min_lr": self.min_lr}


class WarmUp(Schedule):
    """Linear warm-up over warmup_steps, then the wrapped schedule (or constant lr).

    Step s < W gives target(0) * (s + 1) / W (never 0, full at s = W - 1);
    step s >= W gives target(s - W), so a decay starts where the warm-up ends."""

    def __init__(self, schedule_or_lr, warmup_steps):
        if isinstance(schedule_or_lr, Schedule):
            self.target = schedule_or_lr
        else:
            self.target = _number("WarmUp", "schedule_or_lr", schedule_or_lr)
        self.warmup_steps = _count("WarmUp", "warmup_steps", warmup_steps)

    def _target(self, step):
        return self.target if isinstance(self.target, float) else self.target.rate(step)

    def rate(self, step):
        if step < self.warmup_steps:
            return self._target(0) * (step + 1) / self.warmup_steps
        return self._target(step - self.warmup_steps)

    def get_config(self):
        target = self.target if isinstance(self.target, float) else self.target.get_config()
        return {"class": "WarmUp", "schedule_or_lr": target, "warmup_steps": self.warmup_steps}


SCHEDULES = {cls.__name__: cls for cls in (StepDecay, ExponentialDecay, CosineDecay, WarmUp)}


def from_config(config: dict) -> Schedule:
    """Rebuild a schedule from its get_config() dict."""
    if not isinstance(config, dict) or config.get("class") not in SCHEDULES:
        raise ValueError(f"schedules.from_config: expected a dict whose 'class' is one of "
                         f"{sorted(SCHEDULES)}, got {config!r}")
    kwargs = {k: v for k, v in config.items() if k != "class"}
    if isinstance(kwargs.get("schedule_or_lr"), dict):
        kwargs["schedule_or_lr"] = from_config(kwargs["schedule_or_lr"])
    return SCHEDULES[config["class"]](**kwargs)
