"""Optimizer updates, in place, one fused grid-stride kernel per rule, and the
sum of squares behind gradient clipping by global norm.

Hyper-parameters arrive in a device row typed like the arrays (float32 for
float32 parameters), so the update stays in single precision; anything that
is constant over a step (1 - beta, bias corrections, 1 - lr * weight_decay) is
computed on the host, once, rather than from a Python literal in the kernel
(an int or float literal next to a float32 value makes numba compute in
float64).

Every update first forms the gradient it follows with `effective_grad`:

    g = scale * grad + weight_decay * w + l1 * sign(w)

scale is the clipping factor (1 when not clipping), weight_decay the coupled
L2 term (0 for decoupled AdamW and for no-decay parameters), l1 the L1 term.
"""
import math

from numba import cuda

from .reduce import BLOCK_MAX, block_sum


@cuda.jit(device=True, inline=True)
def effective_grad(g, w, scale, weight_decay, l1):
    """scale * g + weight_decay * w + l1 * sign(w); each term skipped when 0,
    so inf/NaN parameters match the reference. sign(NaN) is NaN, as np.sign."""
    g = g * scale
    if weight_decay != 0:
        g += weight_decay * w
    if l1 != 0:
        if w > 0:
            g += l1
        elif w < 0:
            g -= l1
        elif w != w:
            g += w
    return g


# ---- SGD ----------------------------------------------------------------------
# Each update reads its hyper-parameters from hp (a row built by
# gpudl/backend/hyper.py, typed like param) and the clipping factor from sc[0],
# so a captured step picks up a new learning rate or bias correction without
# being recorded again.
@cuda.jit
def sgd(param, grad, hp, sc):
    """param -= lr * g; hp = [lr, weight_decay, l1]."""
    lr, weight_decay, l1, scale = hp[0], hp[1], hp[2], sc[0]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, param.shape[0], stride):
        param[i] -= lr * effective_grad(grad[i], param[i], scale, weight_decay, l1)


@cuda.jit
def sgd_momentum(param, grad, velocity, hp, sc, nesterov):
    """v = momentum * v - lr * g; param += v, or param += momentum * v - lr * g
    with nesterov (nonzero). hp = [lr, momentum, weight_decay, l1]."""
    lr, momentum, weight_decay, l1, scale = hp[0], hp[1], hp[2], hp[3], sc[0]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, param.shape[0], stride):
        g = effective_grad(grad[i], param[i], scale, weight_decay, l1)
        v = momentum * velocity[i] - lr * g
        velocity[i] = v
        if nesterov:
            param[i] += momentum * v - lr * g
        else:
            param[i] += v


# ---- Adam / AdamW ---------------------------------------------------------------
@cuda.jit
def adam(param, grad, m, v, hp, sc):
    """PyTorch's Adam step t, with the bias corrections folded in on the host:
    hp = [step_size, beta1, 1 - beta1, beta2, 1 - beta2, eps, bc2_sqrt,
    weight_decay, decay, l1] with step_size = lr / (1 - beta1^t),
    bc2_sqrt = sqrt(1 - beta2^t), decay = 1 - lr * weight_decay for AdamW
    (1 otherwise).

        w *= decay                                   (decoupled, AdamW)
        m = beta1 m + (1 - beta1) g
        v = beta2 v + (1 - beta2) g^2
        w -= step_size * m / (sqrt(v) / bc2_sqrt + eps)"""
    step_size, beta1, one_minus_beta1, beta2 = hp[0], hp[1], hp[2], hp[3]
    one_minus_beta2, eps, bc2_sqrt, weight_decay = hp[4], hp[5], hp[6], hp[7]
    decay, l1, scale = hp[8], hp[9], sc[0]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, param.shape[0], stride):
        w = param[i]
        g = effective_grad(grad[i], w, scale, weight_decay, l1)
        if decay != 1:
            w *= decay
        mi = beta1 * m[i] + one_minus_beta1 * g
        vi = beta2 * v[i] + one_minus_beta2 * g * g
        m[i] = mi
        v[i] = vi
        param[i] = w - step_size * mi / (math.sqrt(vi) / bc2_sqrt + eps)


# ---- RMSprop ----------------------------------------------------------------------
@cuda.jit
def rmsprop(param, grad, square_avg, hp, sc):
    """s = alpha s + (1 - alpha) g^2;  w -= lr g / (sqrt(s) + eps).
    hp = [lr, alpha, 1 - alpha, eps, weight_decay, l1]."""
    lr, alpha, one_minus_alpha, eps = hp[0], hp[1], hp[2], hp[3]
    weight_decay, l1, scale = hp[4], hp[5], sc[0]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, param.shape[0], stride):
        w = param[i]
        g = effective_grad(grad[i], w, scale, weight_decay, l1)
        s = alpha * square_avg[i] + one_minus_alpha * g * g
        square_avg[i] = s
        param[i] = w - lr * g / (math.sqrt(s) + eps)


@cuda.jit
def rmsprop_momentum(param, grad, square_avg, buf, hp, sc):
    """s = alpha s + (1 - alpha) g^2;  b = momentum b + g / (sqrt(s) + eps);  w -= lr b.
    hp = [lr, alpha, 1 - alpha, eps, momentum, weight_decay, l1]."""
    lr, alpha, one_minus_alpha, eps = hp[0], hp[1], hp[2], hp[3]
    momentum, weight_decay, l1, scale = hp[4], hp[5], hp[6], sc[0]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, param.shape[0], stride):
        w = param[i]
        g = effective_grad(grad[i], w, scale, weight_decay, l1)
        s = alpha * square_avg[i] + one_minus_alpha * g * g
        square_avg[i] = s
        b = momentum * buf[i] + g / (math.sqrt(s) + eps)
        buf[i] = b
        param[i] = w - lr * b


# ---- Adagrad ----------------------------------------------------------------------
@cuda.jit
def adagrad(param, grad, sum_sq, hp, sc):
    """a += g^2;  w -= lr g / (sqrt(a) + eps).  hp = [lr, eps, weight_decay, l1]."""
    lr, eps, weight_decay, l1, scale = hp[0], hp[1], hp[2], hp[3], sc[0]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, param.shape[0], stride):
        w = param[i]
        g = effective_grad(grad[i], w, scale, weight_decay, l1)
        a = sum_sq[i] + g * g
        sum_sq[i] = a
        param[i] = w - lr * g / (math.sqrt(a) + eps)


# ---- clipping: sum of squares ---------------------------------------------------
@cuda.jit
def sum_squares(x, partial):
    """partial[b] = sum of x[i]^2 over the grid-stride slice block b owns.

    blockDim.x a power of two <= BLOCK_MAX. For a global norm every
    gradient writes its partials into its own slice of one buffer, then
    reduce.sum_1d (one block) sums the buffer: one host read per step."""
    red = cuda.shared.array(BLOCK_MAX, x.dtype)
    acc = x.dtype.type(0)
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        acc += x[i] * x[i]
    total = block_sum(red, acc)
    if cuda.threadIdx.x == 0:
        partial[cuda.blockIdx.x] = total


@cuda.jit
def clip_factor(totals, clip_norm, out):
    """One thread: out[0] = N = sqrt(sum(totals)) (the global norm, float64),
    out[1] = clip_norm / (N + 1e-6) when that is below 1, else 1 -- the
    factor torch.nn.utils.clip_grad_norm_ scales by, computed on the device
    so a clipped step never waits for the host."""
    if cuda.grid(1) == 0:
        total = 0.0
        for i in range(totals.shape[0]):
            total += totals[i]
        norm = math.sqrt(total)
        coef = clip_norm / (norm + 1e-6)
        out[0] = norm
        out[1] = coef if coef < 1.0 else 1.0


@cuda.jit
def store_f64(src, dst, index):
    """One thread: dst[index] = src[0], widened to float64 (dst float64)."""
    if cuda.grid(1) == 0:
        dst[index] = src[0]


@cuda.jit
def narrow_from_f64(src, index, dst):
    """One thread: dst[0] = src[index], rounded to dst's type."""
    if cuda.grid(1) == 0:
        dst[0] = src[index]
