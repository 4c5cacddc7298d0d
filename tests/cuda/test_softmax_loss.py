"""Softmax forward/backward and the losses: CUDA backend vs the CPU reference."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cudatest import big, check, dims, examples, host, poisoned, rand, seeds

scales = st.sampled_from([1.0, 10.0])


@examples(5)
@given(n=dims(20), c=dims(40), seed=seeds, scale=scales)
def test_softmax(be, cpu, n, c, seed, scale):
    x = rand(seed, (n, c), scale=scale)
    with poisoned(be):
        got = be.softmax(be.asarray(x))
    check(host(be, got), cpu.softmax(x), rtol=1e-5, atol=1e-7)


@examples(5)
@given(n=dims(20), c=dims(40), seed=seeds)
def test_softmax_backward(be, cpu, n, c, seed):
    y = cpu.softmax(rand(seed, (n, c)))
    g = rand(seed + 1, (n, c))
    with poisoned(be):
        got = be.softmax_backward(be.asarray(y), be.asarray(g))
    check(host(be, got), cpu.softmax_backward(y, g), rtol=1e-4, atol=1e-6)


@examples(5)
@given(n=dims(20), c=dims(40), seed=seeds, scale=scales)
def test_softmax_cross_entropy(be, cpu, n, c, seed, scale):
    _sce(be, cpu, rand(seed, (n, c), scale=scale),
         np.random.default_rng(seed).integers(0, c, n))


def _sce(be, cpu, logits, labels):
    with poisoned(be):
        loss, grad = be.softmax_cross_entropy(be.asarray(logits), be.asarray(labels))
    ref_loss, ref_grad = cpu.softmax_cross_entropy(logits, labels)
    assert isinstance(loss, float)
    assert abs(loss - ref_loss) <= 1e-6 + 1e-5 * abs(ref_loss)
    check(host(be, grad), ref_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("n,c", [(1, 1), (1, 33), (9, 2)] + big((4096, 1000), (100_000, 10)))
def test_sce_edges_labels_at_ends(be, cpu, n, c):
    """Labels 0 and C-1 (and C = 1, where the only label is both)."""
    labels = np.arange(n) % 2 * (c - 1)
    _sce(be, cpu, rand(n + c, (n, c), scale=5), labels)


def test_large_logits(be, cpu):
    """|x| ~ 1e4: naive exp overflows; max-shifting must keep it finite."""
    x = np.array([[1e4, -1e4, 0.0, 9999.0], [-1e4, -1e4 + 1, -1e4, -3e4],
                  [88.0, 89.0, 90.0, -90.0]], np.float32)
    labels = np.array([3, 0, 2])
    with poisoned(be):
        y = host(be, be.softmax(be.asarray(x)))
        loss, grad = be.softmax_cross_entropy(be.asarray(x), be.asarray(labels))
    assert np.isfinite(y).all() and np.isfinite(loss) and np.isfinite(host(be, grad)).all()
    check(y, cpu.softmax(x), rtol=1e-5, atol=1e-7)
    _sce(be, cpu, x, labels)


@pytest.mark.parametrize("bad", [4, -1, -5])
def test_sce_bad_label_is_the_cpu_error(be, cpu, bad):
    """Host labels are checked before the kernel, device labels after it (from
    the NaN loss a bad row gets); either way the CPU backend's message. A
    negative label must not wrap as a NumPy index would."""
    logits = rand(0, (3, 4))
    labels = np.array([0, bad, 1])
    with pytest.raises(IndexError, match=rf"label {bad} \(row 1\).*\[0, 4\)") as ref:
        cpu.softmax_cross_entropy(logits, labels)
    for given in (labels, be.asarray(labels)):
        with pytest.raises(IndexError) as err:
            be.softmax_cross_entropy(be.asarray(logits), given)
        assert str(err.value) == str(ref.value)


def _loss_case(be, cpu, op, pred, target, **kw):
    with poisoned(be):
        loss, grad = getattr(be, op)(be.asarray(pred), be.asarray(target), **kw)
    ref_loss, ref_grad = getattr(cpu, op)(pred, target, **kw)
    assert isinstance(loss, float)
    assert abs(loss - ref_loss) <= 1e-6 + 1e-5 * abs(ref_loss), (loss, ref_loss)
    check(host(be, grad), ref_grad, rtol=1e-4, atol=1e-9)


shapes = st.lists(dims(12), min_size=1, max_size=3).map(tuple)


@examples(5)
@given(shape=shapes, seed=seeds)
def test_mse(be, cpu, shape, seed):
    _loss_case(be, cpu, "mse", rand(seed, shape), rand(seed + 1, shape))


@pytest.mark.parametrize("from_logits", [False, True])
@examples(5)
@given(shape=shapes, seed=seeds, scale=scales)
def test_bce(be, cpu, from_logits, shape, seed, scale):
    z = rand(seed, shape, scale=scale)
    target = (np.random.default_rng(seed).random(shape) < 0.5).astype(np.float32)
    pred = z if from_logits else cpu.sigmoid(z)
    _loss_case(be, cpu, "binary_cross_entropy", pred, target, from_logits=from_logits)


@pytest.mark.parametrize("from_logits", [False, True])
def test_bce_extremes(be, cpu, from_logits):
    """Probabilities at 0 and 1 (clipped), logits of +-1e4 (no overflow)."""
    if from_logits:
        pred = np.array([-1e4, -50.0, -1e-3, 0.0, 1e-3, 50.0, 1e4, 3.0], np.float32)
    else:
        pred = np.array([0.0, 1e-9, 1e-7, 0.5, 1 - 1e-7, 1.0, 0.3, 0.9], np.float32)
    target = np.array([0, 1, 0, 1, 0, 1, 0.25, 1], np.float32)
    _loss_case(be, cpu, "binary_cross_entropy", pred, target, from_logits=from_logits)


def test_bce_rejects_predictions_that_are_not_probabilities(be, cpu):
    """The kernel marks each with an infinite loss (it cannot raise); the mean
    then raises the CPU backend's error, and a fit stops in its first epoch."""
    pred = np.array([0.2, 1.25, 0.0, 1.0, -0.5], np.float32)
    target = np.array([0, 1, 0, 1, 1], np.float32)
    with pytest.raises(ValueError, match=r"in \[0, 1\].*from_logits=True"):
        cpu.binary_cross_entropy(pred, target)
    with pytest.raises(ValueError, match=r"in \[0, 1\].*from_logits=True"):
        be.binary_cross_entropy(be.asarray(pred), be.asarray(target))
    losses, _ = be.binary_cross_entropy(be.asarray(pred), be.asarray(target), reduce=False)
    losses = host(be, losses)
    assert np.isinf(losses[[1, 4]]).all() and np.isfinite(losses[[0, 2, 3]]).all()

    import gpudl
    gpudl.set_device("cuda")
    try:
        t = gpudl.Trainer(gpudl.Sequential([gpudl.layers.Dense(2, 1, seed=0)]),
                          gpudl.losses.BinaryCrossEntropy(), gpudl.optim.SGD(0.1))
        x = rand(3, (6, 2), scale=10)
        with pytest.raises(ValueError, match=r"BinaryCrossEntropy: .*from_logits=True"):
            t.fit(x, (x[:, :1] > 0).astype(np.float32), epochs=2, verbose=False)
        assert t.epoch == 0
    finally:
        gpudl.set_device("cpu")


@pytest.mark.parametrize("size", big(1 << 20))
def test_losses_large(be, cpu, size):
    pred = rand(1, (size,))
    target = rand(2, (size,))
    _loss_case(be, cpu, "mse", pred, target)
    p = cpu.sigmoid(pred)
    t = (target > 0).astype(np.float32)
    _loss_case(be, cpu, "binary_cross_entropy", p, t)
    _loss_case(be, cpu, "binary_cross_entropy", pred, t, from_logits=True)
