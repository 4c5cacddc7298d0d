"""The precision policy on the CPU reference: rounding, reduced-precision
matmul and convolution, the layers under a policy, FP16 loss scaling, and
checkpoints that carry the policy and the scaler."""
import numpy as np
import pytest

import gpudl
from gpudl import precision as P
from gpudl.backend.cpu import CPUBackend
from gpudl.layers import Conv2D, Dense, Flatten, ReLU

KEEP = {"bf16": 16, "tf32": 13, "fp16": 13}  # low mantissa bits dropped


@pytest.fixture(autouse=True)
def fp32_after():
    yield
    gpudl.set_precision("fp32")


def random_bits(n, seed=0):
    """float32 values from uniformly random bit patterns: every exponent, NaNs,
    infinities, subnormals, both zeros."""
    u = np.random.default_rng(seed).integers(0, 2 ** 32, size=n, dtype=np.uint64)
    return u.astype(np.uint32).view(np.float32)


def neighbours_reference(x, fmt):
    """An independent rounding: the two representable neighbours by truncation,
    chosen by their float64 distance; ties to the even one (BF16) or away from
    zero (TF32). Finite x whose result is finite only."""
    drop = KEEP[fmt]
    u = x.view(np.uint32).astype(np.uint64)
    down = (u >> drop) << drop
    up = down + (1 << drop)
    lo = down.astype(np.uint32).view(np.float32).astype(np.float64)
    hi = up.astype(np.uint32).view(np.float32).astype(np.float64)
    xv = x.astype(np.float64)
    d_lo, d_hi = np.abs(xv - lo), np.abs(hi - xv)
    if fmt == "bf16":
        even = ((down >> drop) & 1) == 0
        pick_up = (d_hi < d_lo) | ((d_hi == d_lo) & ~even)
    else:
        pick_up = d_hi <= d_lo
    return np.where(pick_up, up, down).astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("fmt", ["bf16", "tf32"])
def test_round_to_matches_the_neighbour_rule(fmt):
    x = random_bits(200_000, seed=1)
    with np.errstate(all="ignore"):
        fine = np.isfinite(x) & (np.abs(x) < 3e38)
    x = x[fine]
    got = P.round_to(x, fmt)
    want = neighbours_reference(x, fmt)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_fp16_matches_numpy_float16_bit_for_bit():
    x = random_bits(500_000, seed=2)
    with np.errstate(all="ignore"):
        want = x.astype(np.float16).astype(np.float32)
    got = P.round_to(x, "fp16")
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("fmt,x,want", [
    ("bf16", 1 + 2 ** -8, 1.0),                  # a tie: to the even neighbour
    ("bf16", 1 + 3 * 2 ** -8, 1 + 2 ** -6),      # a tie: up to the even one
    ("bf16", 1 + 2 ** -8 + 2 ** -20, 1 + 2 ** -7),  # past the tie
    ("tf32", 1 + 2 ** -11, 1 + 2 ** -10),        # a tie: away from zero
    ("tf32", -(1 + 2 ** -11), -(1 + 2 ** -10)),
    ("fp16", 65519.0, 65504.0),
    ("fp16", 65520.0, np.inf),                   # the tie past the largest FP16 rounds to inf
    ("fp16", 2.0 ** -25, 0.0),                   # half the smallest subnormal: to even (zero)
    ("fp16", 1.5 * 2.0 ** -25, 2.0 ** -24),
    ("bf16", 3.4e38, np.inf),
    ("bf16", -0.0, -0.0),
])
def test_round_to_edges(fmt, x, want):
    got = P.round_to(np.array([x], np.float32), fmt)[0]
    assert got == np.float32(want) and np.signbit(got) == np.signbit(np.float32(want))


@pytest.mark.parametrize("fmt", P.FORMATS)
def test_nan_stays_a_quiet_nan_and_inf_stays(fmt):
    x = np.array([np.nan, -np.nan, np.inf, -np.inf], np.float32)
    x[1] = np.uint32(0xFF80FFFF).view(np.float32)  # a NaN whose payload sits in the low bits
    got = P.round_to(x, fmt)
    assert np.isnan(got[:2]).all() and got[2] == np.inf and got[3] == -np.inf
    assert np.all(got[:2].view(np.uint32) & np.uint32(0x00400000))


def test_bf16_bits_round_trip():
    x = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    bits = P.to_bf16_bits(x)
    assert bits.dtype == np.uint16
    assert np.array_equal(P.from_bf16_bits(bits), P.round_to(x, "bf16"))


# ---- the policy ----------------------------------------------------------------
def test_set_precision_checks_and_scopes():
    assert gpudl.get_precision() == "fp32"
    with pytest.raises(ValueError, match="'fp32', 'tf32', 'bf16-mixed', 'fp16-mixed'.*'bf16'"):
        gpudl.set_precision("bf16")
    with P.using("bf16-mixed"):
        assert P.compute_format(np.float32) == "bf16"
        assert P.compute_format(np.float64) is None  # float64 always computes in float64
    assert gpudl.get_precision() == "fp32" and P.compute_format(np.float32) is None


@pytest.mark.parametrize("fmt", P.FORMATS)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_cpu_matmul_rounds_both_inputs(fmt, ta, tb):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((37, 29) if not ta else (29, 37)).astype(np.float32)
    b = rng.standard_normal((29, 23) if not tb else (23, 29)).astype(np.float32)
    be = CPUBackend()
    got = be.matmul(a, b, ta, tb, precision=fmt)
    ra, rb = (P.round_to(v, fmt).astype(np.float64) for v in (a, b))
    want = (ra.T if ta else ra) @ (rb.T if tb else rb)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    exact = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    assert np.abs(got - exact).max() > 1e-4  # the rounding really happened


def test_reduced_precision_needs_float32():
    be = CPUBackend()
    a = np.ones((2, 2))
    with pytest.raises(ValueError, match="float32 arrays, got float64"):
        be.matmul(a, a, precision="bf16")
    with pytest.raises(ValueError, match="format must be None or one of"):
        be.matmul(a.astype(np.float32), a.astype(np.float32), precision="bf16-mixed")


def test_conv_ops_round_their_two_inputs():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    be = CPUBackend()
    geo = ((2, 1), (1, 1, 0, 2), (1, 2))
    y = be.conv2d(x, w, *geo, precision="bf16")
    np.testing.assert_array_equal(
        y, be.conv2d(P.round_to(x, "bf16"), P.round_to(w, "bf16"), *geo))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_array_equal(
        be.conv2d_backward_input(dy, w, (9, 8), *geo, precision="fp16"),
        be.conv2d_backward_input(P.round_to(dy, "fp16"), P.round_to(w, "fp16"), (9, 8), *geo))
    np.testing.assert_array_equal(
        be.conv2d_backward_weight(dy, x, (3, 3), *geo, precision="tf32"),
        be.conv2d_backward_weight(P.round_to(dy, "tf32"), P.round_to(x, "tf32"), (3, 3), *geo))


def test_dense_under_bf16_mixed_rounds_forward_and_backward():
    gpudl.set_device("cpu")
    layer = Dense(13, 7, seed=1)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 13)).astype(np.float32)
    g = rng.standard_normal((5, 7)).astype(np.float32)
    r = lambda v: P.round_to(v, "bf16").astype(np.float64)  # noqa: E731
    W = layer.params["W"]
    with P.using("bf16-mixed"):
        z = layer.forward(x)
        dx = layer.backward(g)
    np.testing.assert_allclose(z, r(x) @ r(W).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.grads["W"], r(g).T @ r(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, r(g) @ r(W), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(layer.grads["b"], g.sum(0))  # reductions stay float32
    assert z.dtype == np.float32  # activations stay float32


def test_float64_layers_still_pass_a_gradient_check_under_mixed_precision():
    from gpudl.gradcheck import check_layer
    gpudl.set_device("cpu")
    with P.using("bf16-mixed"):
        conv = Conv2D(2, 3, 3, padding="same", dtype=np.float64, seed=2)
        x = np.random.default_rng(7).standard_normal((2, 2, 5, 5))
        errors = check_layer(conv, x)  # raises AssertionError on a mismatch
    assert set(errors) >= {"input", "W"}


# ---- FP16 loss scaling ------------------------------------------------------------
def test_loss_scaler_halves_on_overflow_and_grows_after_clean_steps():
    s = P.LossScaler(init_scale=8.0, growth_interval=3)
    assert s.update(found_inf=True) is False and s.scale == 4.0 and s.skipped == 1
    assert all(s.update(False) for _ in range(2)) and s.scale == 4.0
    assert s.update(False) and s.scale == 8.0 and s.good_steps == 0
    s2 = P.LossScaler()
    s2.load_state_dict(s.state_dict())
    assert s2.state_dict() == s.state_dict()
    with pytest.raises(ValueError, match="LossScaler: backoff_factor"):
        P.LossScaler(backoff_factor=1.5)


def _tiny_model():
    gpudl.set_device("cpu")
    gpudl.manual_seed(0)
    return gpudl.Sequential([Flatten(), Dense(16, 8), ReLU(), Dense(8, 3)], input_shape=(1, 4, 4))


def _data(n=24, seed=8):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, n)


def test_fp16_step_with_overflowing_gradients_is_skipped():
    model = _tiny_model()
    x, y = _data()
    # 2**40 times any loss gradient is far past FP16's 65504: every step overflows
    scaler = P.LossScaler(init_scale=2.0 ** 40, growth_interval=1000)
    tr = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.1),
                       precision="fp16-mixed", loss_scaler=scaler)
    before = [p.copy() for p in model.state_arrays().values()]
    tr.fit(x[:8], y[:8], epochs=1, batch_size=8, verbose=False)
    after = list(model.state_arrays().values())
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert scaler.skipped == 1 and scaler.scale == 2.0 ** 39 and tr.step == 0
    # with a sane scale the same step is applied
    scaler.scale = 1024.0
    tr.fit(x[:8], y[:8], epochs=1, batch_size=8, verbose=False)
    assert tr.step == 1 and scaler.skipped == 1
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.state_arrays().values()))


def test_fp16_loss_scaling_keeps_gradients_that_fp16_would_flush():
    """A loss gradient below FP16's smallest subnormal (2**-24) is zero in FP16
    unless it is scaled up first: the scaled step must move the weights."""
    def first_step(init_scale):
        model = _tiny_model()
        x, y = _data()
        tr = gpudl.Trainer(model, gpudl.losses.MSE(), gpudl.optim.SGD(1.0),
                           precision="fp16-mixed",
                           loss_scaler=P.LossScaler(init_scale=init_scale))
        pred = tr.predict(x[:8])  # under the trainer's policy, as training computes it
        target = np.nextafter(pred, np.float32(np.inf))  # one float32 step above
        grad = 2 * (pred.astype(np.float64) - target) / pred.size  # d(mse)/d(out)
        assert 0 < np.abs(grad).max() < 2.0 ** -25  # FP16 rounds all of it to zero
        w0 = model.layers[-1].params["W"].copy()
        tr.fit(x[:8], target, epochs=1, batch_size=8, verbose=False)
        return np.abs(model.layers[-1].params["W"] - w0).max()
    assert first_step(1.0) == 0.0
    assert first_step(2.0 ** 16) > 0.0


def test_checkpoint_carries_precision_and_scaler(tmp_path):
    from gpudl.checkpoint import CheckpointError, ModelCheckpoint
    x, y = _data(32)
    path = tmp_path / "ck.npz"
    tr = gpudl.Trainer(_tiny_model(), gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.05),
                       precision="fp16-mixed", loss_scaler=P.LossScaler(growth_interval=3))
    tr.fit(x, y, epochs=2, batch_size=8, verbose=False, callbacks=[ModelCheckpoint(path)])
    state = tr.loss_scaler.state_dict()
    full = tr.model.state_arrays()

    tr2 = gpudl.Trainer(_tiny_model(), gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.05),
                        precision="fp16-mixed")
    tr2.fit(x, y, epochs=2, batch_size=8, verbose=False, resume_from=path)
    assert tr2.loss_scaler.state_dict() == state
    for k, v in tr2.model.state_arrays().items():
        np.testing.assert_array_equal(v, full[k])

    tr3 = gpudl.Trainer(_tiny_model(), gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.05))
    with pytest.raises(CheckpointError, match="precision 'fp16-mixed' but this run uses 'fp32'"):
        tr3.fit(x, y, epochs=3, batch_size=8, verbose=False, resume_from=path)


def test_trainer_rejects_a_bad_policy_before_any_work():
    with pytest.raises(ValueError, match="Trainer: precision must be one of"):
        gpudl.Trainer(_tiny_model(), gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.1),
                      precision="bf16")


def test_fp16_mixed_blocks_captured_steps():
    from gpudl import graph
    tr = gpudl.Trainer(_tiny_model(), gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.1),
                       precision="fp16-mixed")
    assert any("fp16-mixed loss scaling" in b for b in graph.blockers(tr))
