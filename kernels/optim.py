"""Optimizer updates, in place, one kernel per rule.

Hyper-parameters must arrive typed like the arrays (np.float32 for float32
parameters), so the update stays in single precision.
"""
from numba import cuda


@cuda.jit
def sgd(param, grad, lr, weight_decay):
    """param -= lr * (grad + weight_decay * param)."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, param.shape[0], stride):
        g = grad[i]
        if weight_decay != 0:  # skipped when 0, so inf/NaN params match the reference
            g += weight_decay * param[i]
        param[i] -= lr * g


@cuda.jit
def sgd_momentum(param, grad, velocity, lr, momentum, weight_decay, nesterov):
    """v = momentum * v - lr * g; param += v, or param += momentum * v - lr * g
    with nesterov (nonzero), g = grad + weight_decay * param."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, param.shape[0], stride):
        g = grad[i]
        if weight_decay != 0:
            g += weight_decay * param[i]
        v = momentum * velocity[i] - lr * g
        velocity[i] = v
        if nesterov:
            param[i] += momentum * v - lr * g
        else:
            param[i] += v
