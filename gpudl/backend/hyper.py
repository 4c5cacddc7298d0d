"""Per-step optimizer scalars as rows of numbers, one row per parameter.

The update kernels (kernels/optim.py) read their hyper-parameters from a
small device array instead of taking them by value, so a captured step keeps
working when the learning rate follows a schedule or Adam's bias correction
moves: the host fills one row per parameter each step (Optimizer.step, through
Backend.step_input) and the same launches read the new values. Each function
returns the row its kernel expects, computed in float64 on the host exactly
as the by-value arguments used to be; the array that holds it is typed like
the parameter, so the kernels stay in single precision.
"""
from __future__ import annotations

import math


def sgd(lr, momentum, weight_decay, l1):
    """sgd: [lr, weight_decay, l1]; sgd_momentum: [lr, momentum, weight_decay, l1]."""
    if momentum == 0.0:
        return [lr, weight_decay, l1]
    return [lr, momentum, weight_decay, l1]


def adam(lr, beta1, beta2, eps, step, weight_decay, decoupled, l1):
    """[step_size, beta1, 1 - beta1, beta2, 1 - beta2, eps, sqrt(1 - beta2^t),
    coupled weight decay, decay, l1] for Adam step t = ``step`` (1 first)."""
    coupled, decay = (0.0, 1.0 - lr * weight_decay) if decoupled else (weight_decay, 1.0)
    return [lr / (1.0 - beta1 ** step), beta1, 1.0 - beta1, beta2, 1.0 - beta2, eps,
            math.sqrt(1.0 - beta2 ** step), coupled, decay, l1]


def rmsprop(lr, alpha, eps, momentum, weight_decay, l1):
    """[lr, alpha, 1 - alpha, eps, weight_decay, l1], momentum before
    weight_decay when momentum > 0."""
    head = [lr, alpha, 1.0 - alpha, eps]
    return head + ([momentum] if momentum != 0.0 else []) + [weight_decay, l1]


def adagrad(lr, eps, weight_decay, l1):
    """[lr, eps, weight_decay, l1]."""
    return [lr, eps, weight_decay, l1]
