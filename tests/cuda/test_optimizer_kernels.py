"""Optimizer update kernels, the sum of squares and the clipping path: CUDA
backend vs the CPU reference, float32 and float64, tiny shapes."""
import copy

import numpy as np
import pytest

import gpudl
from cudatest import big, check, host, poisoned, rand
from gpudl.errors import ShapeError
from gpudl.layers import Dense

DTYPES = [np.float32, np.float64]

# op -> (backend method, state slots, keyword arguments besides the regularization)
UPDATES = {
    "sgd": ("sgd_update", ["velocity"], dict(lr=0.1, momentum=0.0)),
    "sgd_momentum": ("sgd_update", ["velocity"], dict(lr=0.1, momentum=0.9)),
    "sgd_nesterov": ("sgd_update", ["velocity"], dict(lr=0.1, momentum=0.8, nesterov=True)),
    "adam": ("adam_update", ["m", "v"], dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8)),
    "adamw": ("adam_update", ["m", "v"],
              dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, decoupled=True)),
    "rmsprop": ("rmsprop_update", ["square_avg", "buf"], dict(lr=0.01, alpha=0.99, eps=1e-8)),
    "rmsprop_momentum": ("rmsprop_update", ["square_avg", "buf"],
                         dict(lr=0.01, alpha=0.9, eps=1e-6, momentum=0.7)),
    "adagrad": ("adagrad_update", ["sum_sq"], dict(lr=0.1, eps=1e-10)),
}
REGS = {"none": dict(), "all": dict(weight_decay=0.05, l1=0.01, grad_scale=0.3)}


def tols(dtype):
    return dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)


def _step_both(be, cpu, op, dtype, shape, reg, steps=2, seed=0):
    method, slots, kwargs = UPDATES[op]
    kwargs = {**kwargs, **REGS[reg]}
    param = rand(seed, shape, dtype)
    param.reshape(-1)[::4] = 0  # sign(0) = 0 in the L1 term
    ref_p, ref_s = param.copy(), {s: np.zeros(shape, dtype) for s in slots}
    dev_p, dev_s = be.asarray(param), {s: be.zeros(shape, dtype) for s in slots}
    for t in range(1, steps + 1):
        grad = rand(seed + t, shape, dtype)
        extra = {"step": t} if method == "adam_update" else {}
        getattr(cpu, method)(ref_p, grad, *ref_s.values(), **kwargs, **extra)
        with poisoned(be):
            getattr(be, method)(dev_p, be.asarray(grad), *dev_s.values(), **kwargs, **extra)
    check(host(be, dev_p), ref_p, **tols(dtype))
    for s in slots:
        check(host(be, dev_s[s]), ref_s[s], **tols(dtype))
    assert not np.array_equal(ref_p, param), "the update did nothing"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reg", sorted(REGS))
@pytest.mark.parametrize("op", sorted(UPDATES))
def test_update_matches_cpu(be, cpu, op, reg, dtype):
    _step_both(be, cpu, op, dtype, (7, 5), reg)


@pytest.mark.parametrize("op", sorted(UPDATES))
@pytest.mark.parametrize("size", [1, 300] + big(1 << 20))
def test_update_sizes(be, cpu, op, size):
    """Several grid-stride passes (simulator: 4 blocks of 64 threads < 300)."""
    _step_both(be, cpu, op, np.float32, (size,), "all", steps=1, seed=size)


def test_update_shape_errors(be):
    p = be.zeros((3, 2), np.float32)
    with pytest.raises(ShapeError, match="grad"):
        be.adam_update(p, be.zeros((2, 3), np.float32), p.copy(), p.copy(), 0.1, 0.9, 0.99,
                       1e-8, 1)
    with pytest.raises(ShapeError, match="sum_sq"):
        be.adagrad_update(p, p.copy(), be.zeros((6,), np.float32), 0.1, 1e-10)
    with pytest.raises(ShapeError, match="buf"):
        be.rmsprop_update(p, p.copy(), p.copy(), None, 0.1, 0.9, 1e-8, momentum=0.5)


@pytest.mark.parametrize("dtypes", [(np.float32,), (np.float64,), (np.float32, np.float64)])
def test_sum_squares(be, cpu, dtypes):
    shapes = [(1,), (37,), (0,), (5, 7), (300,)]
    arrays = [rand(i, s, dtypes[i % len(dtypes)]) for i, s in enumerate(shapes)]
    with poisoned(be):
        got = be.sum_squares([be.asarray(a) for a in arrays])
    ref = cpu.sum_squares(arrays)
    exact = sum(float((a.astype(np.float64) ** 2).sum()) for a in arrays)
    rtol = 1e-5 if np.float32 in dtypes else 1e-12
    assert got == pytest.approx(ref, rel=rtol) and got == pytest.approx(exact, rel=rtol)
    assert be.sum_squares([]) == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", [
    lambda: gpudl.optim.Adam(0.05, clip_norm=0.5, weight_decay=0.01),
    lambda: gpudl.optim.SGD(0.1, momentum=0.9, clip_norm=0.5, l1=0.01),
    lambda: gpudl.optim.RMSprop(0.01, momentum=0.5, clip_norm=0.5),
    lambda: gpudl.optim.Adagrad(0.1, clip_norm=0.5, decay_all=True, weight_decay=0.1)])
def test_clipped_steps_match_cpu(be, make, dtype):
    """Whole optimizer steps with clipping active, a CUDA model against a CPU one."""
    gpudl.set_device("cpu")
    cpu_model = gpudl.Sequential([Dense(4, 3, dtype=dtype, seed=0), Dense(3, 2, dtype=dtype,
                                                                          seed=1)])
    gpu_model = copy.deepcopy(cpu_model).to("cuda")
    opts = make(), make()
    for step in range(2):
        for model in (cpu_model, gpu_model):
            for i, layer in enumerate(model.layers):
                layer.grads = {k: layer.backend.asarray(rand(10 * step + i + len(k), v.shape,
                                                             dtype, scale=2.0))
                               for k, v in layer.params.items()}
        opts[0].step(cpu_model)
        with poisoned(gpu_model.backend):
            opts[1].step(gpu_model)
        assert opts[0].last_grad_norm > 0.5  # clipping is active
        assert opts[1].last_grad_norm == pytest.approx(opts[0].last_grad_norm,
                                                       rel=tols(dtype)["rtol"])
    ref, got = cpu_model.state_arrays(), gpu_model.state_arrays()
    for k in ref:
        check(got[k], ref[k], **tols(dtype))
    config, arrays = opts[1].state_dict()
    for k, v in opts[0].state_dict()[1].items():
        if v.ndim:
            check(arrays[k], v, **tols(dtype))
        else:
            assert arrays[k] == v
