"""Adam, AdamW, RMSprop, Adagrad; L1 and weight decay; per-layer overrides;
learning-rate schedules; clipping by global norm; state save and restore.

Each optimizer is checked against its formula written out here in NumPy
(not by calling gpudl) and against PyTorch's trajectory when torch is installed."""
import json
import math

import numpy as np
import pytest

import gpudl
from gpudl import schedules
from gpudl.layers import BatchNorm, Dense, Residual
from gpudl.optim import SGD, Adagrad, Adam, AdamW, RMSprop, from_config

STEPS = 5


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")


def tiny(dtype=np.float64):
    """Dense(3, 2) with nonzero W and b, and a second Dense(2, 2)."""
    a, b = Dense(3, 2, dtype=dtype, seed=1), Dense(2, 2, dtype=dtype, seed=2)
    a.params["b"][:] = [0.3, -0.2]
    b.params["b"][:] = [-0.1, 0.4]
    return gpudl.Sequential([a, b])


def grads_for(model, step):
    """Fixed pseudo-random gradients for every param, a function of the step."""
    rng = np.random.default_rng(100 + step)
    for layer in model.layers:
        layer.grads = {k: rng.standard_normal(v.shape).astype(v.dtype)
                       for k, v in layer.params.items()}


def snapshot(model):
    return {f"{i}.{k}": np.array(v) for i, layer in enumerate(model.layers)
            for k, v in layer.params.items()}


def run(model, opt, steps=STEPS):
    """Trajectory: a list (per step) of {key: param} after the step."""
    path = []
    for s in range(steps):
        grads_for(model, s)
        opt.step(model)
        path.append(snapshot(model))
    return path


def reference(model, update, steps=STEPS, decay=lambda key: not key.endswith(".b")):
    """The same run with update(key, w, g, state, t, decays) written out in NumPy."""
    w = snapshot(model)
    state = {k: {} for k in w}
    path = []
    for s in range(steps):
        grads_for(model, s)
        g = {f"{i}.{k}": np.array(v) for i, layer in enumerate(model.layers)
             for k, v in layer.grads.items()}
        for k in w:
            w[k] = update(k, w[k], g[k], state[k], s + 1, decay(k))
        path.append({k: v.copy() for k, v in w.items()})
    return path


def assert_paths(ours, ref, rtol=1e-12, atol=1e-14):
    for s, (a, b) in enumerate(zip(ours, ref)):
        for k in b:
            np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=f"step {s} {k}")


# ---- the formulas, written out -----------------------------------------------------
def adam_formula(lr, b1, b2, eps, wd=0.0, decoupled=False, l1=0.0):
    def update(k, w, g, st, t, decays):
        wd_, l1_ = (wd, l1) if decays else (0.0, 0.0)
        g = g + l1_ * np.sign(w)
        if decoupled:
            w = w - lr * wd_ * w
        else:
            g = g + wd_ * w
        st["m"] = b1 * st.get("m", 0.0) + (1 - b1) * g
        st["v"] = b2 * st.get("v", 0.0) + (1 - b2) * g ** 2
        m_hat = st["m"] / (1 - b1 ** t)
        v_hat = st["v"] / (1 - b2 ** t)
        return w - lr * m_hat / (np.sqrt(v_hat) + eps)
    return update


def rmsprop_formula(lr, alpha, eps, momentum=0.0, wd=0.0, l1=0.0):
    def update(k, w, g, st, t, decays):
        if decays:
            g = g + wd * w + l1 * np.sign(w)
        st["s"] = alpha * st.get("s", 0.0) + (1 - alpha) * g ** 2
        step = g / (np.sqrt(st["s"]) + eps)
        if momentum:
            st["b"] = momentum * st.get("b", 0.0) + step
            step = st["b"]
        return w - lr * step
    return update


def adagrad_formula(lr, eps, wd=0.0, l1=0.0):
    def update(k, w, g, st, t, decays):
        if decays:
            g = g + wd * w + l1 * np.sign(w)
        st["a"] = st.get("a", 0.0) + g ** 2
        return w - lr * g / (np.sqrt(st["a"]) + eps)
    return update


FORMULAS = [
    (lambda: Adam(0.01), adam_formula(0.01, 0.9, 0.999, 1e-8)),
    (lambda: Adam(0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, l1=0.01),
     adam_formula(0.02, 0.8, 0.99, 1e-6, wd=0.1, l1=0.01)),
    (lambda: AdamW(0.01, weight_decay=0.1), adam_formula(0.01, 0.9, 0.999, 1e-8, 0.1, True)),
    (lambda: Adam(0.01, weight_decay=0.05, decoupled=True, l1=0.02),
     adam_formula(0.01, 0.9, 0.999, 1e-8, 0.05, True, 0.02)),
    (lambda: RMSprop(0.01), rmsprop_formula(0.01, 0.99, 1e-8)),
    (lambda: RMSprop(0.005, alpha=0.9, eps=1e-6, momentum=0.9, weight_decay=0.01, l1=0.003),
     rmsprop_formula(0.005, 0.9, 1e-6, 0.9, 0.01, 0.003)),
    (lambda: Adagrad(0.1), adagrad_formula(0.1, 1e-10)),
    (lambda: Adagrad(0.1, eps=1e-6, weight_decay=0.02, l1=0.01),
     adagrad_formula(0.1, 1e-6, 0.02, 0.01)),
]


@pytest.mark.parametrize("make,formula", FORMULAS)
def test_matches_formula(make, formula):
    ours = run(tiny(), make())
    assert_paths(ours, reference(tiny(), formula))


@pytest.mark.parametrize("make,formula", FORMULAS[:1] + FORMULAS[4:5] + FORMULAS[6:7])
def test_float32_stays_float32(make, formula):
    model = tiny(np.float32)
    ours = run(model, make())
    assert all(v.dtype == np.float32 for v in ours[-1].values())
    assert_paths(ours, reference(tiny(np.float32), formula), rtol=1e-5, atol=1e-6)


# ---- PyTorch -----------------------------------------------------------------------
def torch_run(model, make_torch, steps=STEPS, clip=None):
    """PyTorch's optimizer on the same params and gradients; biases in a no-decay group."""
    torch = pytest.importorskip("torch")
    ps = {k: torch.tensor(v, requires_grad=True) for k, v in snapshot(model).items()}
    decay = [p for k, p in ps.items() if not k.endswith(".b")]
    no_decay = [p for k, p in ps.items() if k.endswith(".b")]
    opt = make_torch(decay, no_decay)
    path, norms = [], []
    for s in range(steps):
        grads_for(model, s)
        for i, layer in enumerate(model.layers):
            for k, g in layer.grads.items():
                ps[f"{i}.{k}"].grad = torch.tensor(g)
        if clip is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_(list(ps.values()), clip)))
        opt.step()
        path.append({k: p.detach().numpy().copy() for k, p in ps.items()})
    return path, norms


def groups(wd):
    return lambda d, nd: [{"params": d, "weight_decay": wd}, {"params": nd, "weight_decay": 0.0}]


TORCH = [
    ("Adam", lambda: Adam(0.01), lambda t, d, nd: t.optim.Adam(d + nd, lr=0.01)),
    ("Adam-wd", lambda: Adam(0.01, betas=(0.85, 0.995), eps=1e-7, weight_decay=0.1),
     lambda t, d, nd: t.optim.Adam(groups(0.1)(d, nd), lr=0.01, betas=(0.85, 0.995), eps=1e-7)),
    ("AdamW", lambda: AdamW(0.01, weight_decay=0.2),
     lambda t, d, nd: t.optim.AdamW(groups(0.2)(d, nd), lr=0.01)),
    ("RMSprop", lambda: RMSprop(0.01), lambda t, d, nd: t.optim.RMSprop(d + nd, lr=0.01)),
    ("RMSprop-momentum", lambda: RMSprop(0.01, alpha=0.9, momentum=0.8, weight_decay=0.05),
     lambda t, d, nd: t.optim.RMSprop(groups(0.05)(d, nd), lr=0.01, alpha=0.9, momentum=0.8)),
    ("Adagrad", lambda: Adagrad(0.1, weight_decay=0.03),
     lambda t, d, nd: t.optim.Adagrad(groups(0.03)(d, nd), lr=0.1)),
    ("SGD", lambda: SGD(0.1, momentum=0.9, weight_decay=0.01),
     lambda t, d, nd: t.optim.SGD(groups(0.01)(d, nd), lr=0.1, momentum=0.9)),
]


@pytest.mark.parametrize("name,ours,theirs", TORCH, ids=[t[0] for t in TORCH])
def test_matches_torch(name, ours, theirs):
    torch = pytest.importorskip("torch")
    ref, _ = torch_run(tiny(), lambda d, nd: theirs(torch, d, nd))
    assert_paths(run(tiny(), ours()), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("clip", [0.5, 100.0])
def test_clipping_matches_torch(clip):
    torch = pytest.importorskip("torch")
    opt = Adam(0.05, clip_norm=clip)
    model = tiny()
    ours, norms = [], []
    for s in range(STEPS):
        grads_for(model, s)
        opt.step(model)
        ours.append(snapshot(model))
        norms.append(opt.last_grad_norm)
    ref, ref_norms = torch_run(tiny(), lambda d, nd: torch.optim.Adam(d + nd, lr=0.05), clip=clip)
    np.testing.assert_allclose(norms, ref_norms, rtol=1e-12)
    assert_paths(ours, ref, rtol=1e-10, atol=1e-12)


def test_schedules_match_torch():
    torch = pytest.importorskip("torch")
    cases = [(schedules.StepDecay(0.1, 3, 0.5),
              lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
             (schedules.ExponentialDecay(0.1, 0.9),
              lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.9)),
             (schedules.CosineDecay(0.1, 8, min_lr=0.01),
              lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 8, eta_min=0.01))]
    for ours, make in cases:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        sched = make(opt)
        for step in range(9):
            assert ours(step) == pytest.approx(sched.get_last_lr()[0], rel=1e-12), (ours, step)
            opt.step()
            sched.step()


# ---- regularization: what is skipped, what overrides ----------------------------
def zero_grads(model):
    """Zero gradients for every leaf layer (a container's grads are views of them)."""
    for layer in model.walk():
        if not hasattr(layer, "chains"):
            layer.grads = {k: np.zeros_like(v) for k, v in layer.params.items()}


MAKERS = [lambda **kw: SGD(0.1, **kw), lambda **kw: SGD(0.1, momentum=0.5, **kw),
          lambda **kw: Adam(0.1, **kw), lambda **kw: AdamW(0.1, **kw),
          lambda **kw: RMSprop(0.1, momentum=0.5, **kw), lambda **kw: Adagrad(0.1, **kw)]


@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize("reg", [{"weight_decay": 0.3}, {"l1": 0.2}])
def test_regularization_skips_biases_and_batchnorm(make, reg):
    model = gpudl.Sequential([Dense(2, 3, dtype=np.float64), BatchNorm(3, dtype=np.float64),
                              Residual([Dense(3, 3, dtype=np.float64),
                                        BatchNorm(3, dtype=np.float64)])])
    for layer in model.walk():
        for v in layer.params.values():
            v[...] = np.random.default_rng(0).uniform(0.5, 1.5, v.shape)
    before = snapshot(model)
    zero_grads(model)
    make(**reg).step(model)
    after = snapshot(model)
    skipped = {"0.b", "1.gamma", "1.beta", "2.block.0.b", "2.block.1.gamma", "2.block.1.beta"}
    assert set(after) == skipped | {"0.W", "2.block.0.W"}
    for k in after:
        if k in skipped:
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)
        else:
            assert (after[k] < before[k]).all(), k  # positive weights shrink
    zero_grads(model)
    make(decay_all=True, **reg).step(model)
    assert all((snapshot(model)[k] < after[k]).all() for k in skipped)


def test_l1_adds_sign_of_the_weight():
    model = tiny()
    w = model.layers[0].params["W"]
    w[...] = [[0.5, -0.25, 0.0], [-2.0, 1.0, 3.0]]
    before = w.copy()
    zero_grads(model)
    SGD(0.1, l1=0.2).step(model)
    np.testing.assert_allclose(w, before - 0.1 * 0.2 * np.sign(before), rtol=1e-15)


def test_per_layer_override():
    model = gpudl.Sequential([Dense(2, 2, dtype=np.float64), Dense(2, 2, dtype=np.float64),
                              Residual(Dense(2, 2, dtype=np.float64)),
                              Dense(2, 2, dtype=np.float64)])
    model.layers[0].weight_decay = 0.0      # exempt
    model.layers[1].weight_decay = 0.5      # stronger
    model.layers[1].l1 = 0.1                # and L1 on top
    model.layers[2].weight_decay = 0.4      # a container passes its value down ...
    model.layers[2].chains["block"][0].l1 = 0.3  # ... and a child adds its own
    before = snapshot(model)
    zero_grads(model)
    SGD(1.0, weight_decay=0.1).step(model)
    after = snapshot(model)
    w = before
    np.testing.assert_allclose(after["0.W"], w["0.W"], rtol=1e-15)
    np.testing.assert_allclose(after["1.W"], w["1.W"] - 0.5 * w["1.W"] - 0.1 * np.sign(w["1.W"]))
    np.testing.assert_allclose(after["2.block.0.W"], w["2.block.0.W"] - 0.4 * w["2.block.0.W"]
                               - 0.3 * np.sign(w["2.block.0.W"]))
    np.testing.assert_allclose(after["3.W"], w["3.W"] - 0.1 * w["3.W"])
    for k in ("0.b", "1.b", "2.block.0.b", "3.b"):
        np.testing.assert_array_equal(after[k], w[k])


def test_bad_layer_override():
    model = tiny()
    model.layers[1].weight_decay = -1.0
    grads_for(model, 0)
    with pytest.raises(ValueError, match="weight_decay"):
        SGD(0.1).step(model)


# ---- schedules ------------------------------------------------------------------------
def test_schedule_values():
    assert [schedules.StepDecay(1.0, 2, 0.5)(s) for s in range(6)] == [1, 1, .5, .5, .25, .25]
    assert schedules.ExponentialDecay(2.0, 0.5)(3) == 0.25
    cos = schedules.CosineDecay(1.0, 4, min_lr=0.2)
    np.testing.assert_allclose([cos(s) for s in range(7)],
                               [1.0, 0.2 + 0.8 * (1 + math.cos(math.pi / 4)) / 2, 0.6,
                                0.2 + 0.8 * (1 + math.cos(3 * math.pi / 4)) / 2, 0.2, 0.2, 0.2])


def test_warm_up():
    np.testing.assert_allclose([schedules.WarmUp(0.1, 4)(s) for s in range(6)],
                               [0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    inner = schedules.StepDecay(0.2, 2, 0.1)
    np.testing.assert_allclose([schedules.WarmUp(inner, 2)(s) for s in range(6)],
                               [0.1, 0.2, 0.2, 0.2, 0.02, 0.02])


def test_epoch_helpers():
    assert schedules.steps_per_epoch(100, 32) == 4
    assert schedules.steps_per_epoch(100) == 1
    assert schedules.epochs_to_steps(3, 4) == 12


def test_optimizer_follows_its_schedule():
    sched = schedules.WarmUp(schedules.CosineDecay(0.1, 3), 2)
    opt = SGD(sched)
    model = tiny()
    rates = []
    for s in range(6):
        rates.append(opt.lr)
        before = snapshot(model)
        grads_for(model, s)
        g = model.layers[0].grads["W"].copy()
        opt.step(model)
        np.testing.assert_allclose(model.layers[0].params["W"], before["0.W"] - rates[-1] * g)
    np.testing.assert_allclose(rates, [sched(s) for s in range(6)])
    assert opt.iterations == 6 and opt.lr == sched(6)


# ---- clipping ----------------------------------------------------------------------------
def test_clipping_scales_by_the_global_norm():
    model = tiny()
    model.layers[1].trainable = False  # a frozen layer's gradients are not counted
    grads_for(model, 0)
    g = {k: v.copy() for k, v in model.layers[0].grads.items()}
    norm = math.sqrt(sum((v ** 2).sum() for v in g.values()))
    before = snapshot(model)
    opt = SGD(1.0, clip_norm=norm / 4)
    opt.step(model)
    assert opt.last_grad_norm == pytest.approx(norm, rel=1e-14)
    scale = (norm / 4) / (norm + 1e-6)
    for k in g:
        np.testing.assert_allclose(model.layers[0].params[k], before[f"0.{k}"] - scale * g[k],
                                   rtol=1e-14)
    np.testing.assert_array_equal(model.layers[1].params["W"], before["1.W"])
    model = tiny()
    opt = SGD(1.0, clip_norm=norm * 10)  # below the threshold: untouched
    grads_for(model, 0)
    opt.step(model)
    np.testing.assert_allclose(model.layers[0].params["W"], before["0.W"] - g["W"], rtol=1e-15)
    assert SGD(0.1).last_grad_norm is None


# ---- state ------------------------------------------------------------------------------
SAVED = [lambda: SGD(schedules.StepDecay(0.1, 2), momentum=0.9, nesterov=True),
         lambda: Adam(schedules.WarmUp(0.01, 3), weight_decay=0.1, l1=0.01, clip_norm=1.0),
         lambda: AdamW(0.01), lambda: RMSprop(0.01, momentum=0.5, decay_all=True),
         lambda: Adagrad(schedules.CosineDecay(0.1, 10))]


@pytest.mark.parametrize("make", SAVED)
def test_state_dict_round_trip_continues_the_trajectory(make):
    model, opt = tiny(), make()
    run(model, opt, 3)
    config, arrays = opt.state_dict()
    config = json.loads(json.dumps(config))  # JSON-able, as a checkpoint stores it
    assert config["class"] == type(opt).__name__ and config["iterations"] == 3
    assert all(k.startswith("state.") and isinstance(v, np.ndarray) for k, v in arrays.items())
    twin = tiny()
    for a, b in zip(twin.layers, model.layers):
        for k in a.params:
            a.params[k][...] = b.params[k]
    rebuilt = from_config(config, arrays, gpudl.get_backend())
    fresh = make()
    fresh.load_state_dict(config, arrays, gpudl.get_backend())
    triplet = tiny()
    for a, b in zip(triplet.layers, model.layers):
        for k in a.params:
            a.params[k][...] = b.params[k]
    grads = [None] * 3
    for s in range(3, 6):
        for m, o in ((model, opt), (twin, rebuilt), (triplet, fresh)):
            grads_for(m, s)
            o.step(m)
        grads[s - 3] = snapshot(model)
        for other in (twin, triplet):
            for k, v in snapshot(other).items():
                np.testing.assert_array_equal(v, grads[s - 3][k], err_msg=f"step {s} {k}")
    assert rebuilt.get_config() == opt.get_config()


def test_state_errors():
    config, arrays = Adam(0.1).state_dict()
    with pytest.raises(ValueError, match="not SGD"):
        SGD(0.1).load_state_dict(config, arrays)
    with pytest.raises(ValueError, match="state.<layer index>"):
        Adam(0.1).load_state_dict(config, {"state.m": np.zeros(2)})
    with pytest.raises(ValueError, match="plain callable"):
        SGD(lambda step: 0.1).state_dict()
    with pytest.raises(ValueError, match="'class'"):
        from_config({"class": "Nope"})
    with pytest.raises(ValueError, match="'class'"):
        schedules.from_config({"class": "Nope"})


# ---- bad arguments --------------------------------------------------------------------
@pytest.mark.parametrize("make,match", [
    (lambda: Adam(0.0), "Adam: lr"), (lambda: Adam(betas=(1.0, 0.9)), r"betas\[0\]"),
    (lambda: Adam(betas=(0.9, -0.1)), r"betas\[1\]"), (lambda: Adam(betas=0.9), "betas"),
    (lambda: Adam(eps=0), "eps"), (lambda: AdamW(weight_decay=-1), "AdamW: weight_decay"),
    (lambda: RMSprop(alpha=1.5), "alpha"), (lambda: RMSprop(momentum=-0.1), "momentum"),
    (lambda: Adagrad(eps=float("nan")), "eps"), (lambda: SGD(0.1, l1=-0.1), "l1"),
    (lambda: RMSprop(clip_norm=0), "clip_norm"), (lambda: Adagrad("0.1"), "lr"),
    (lambda: schedules.StepDecay(0.1, 0), "step_size"),
    (lambda: schedules.StepDecay(0.1, 2, gamma=-1), "gamma"),
    (lambda: schedules.CosineDecay(0.1, 10, min_lr=0.2), "min_lr"),
    (lambda: schedules.CosineDecay(0.1, 2.5), "total_steps"),
    (lambda: schedules.WarmUp(0.1, 0), "warmup_steps"),
    (lambda: schedules.WarmUp("fast", 3), "schedule_or_lr"),
    (lambda: schedules.ExponentialDecay(0.1, 0.9)(-1), "step"),
    (lambda: schedules.steps_per_epoch(10, 0), "batch_size"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_schedule_value():
    opt = SGD(lambda step: float("nan"))
    with pytest.raises(ValueError, match="lr schedule"):
        opt.step(tiny())
    with pytest.raises(ValueError, match="lr schedule"):
        opt.lr


def test_trainer_with_adam_schedule_and_clipping():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    gpudl.manual_seed(0)
    model = gpudl.Sequential([Dense(4, 8), gpudl.layers.ReLU(), Dense(8, 2)])
    opt = Adam(schedules.WarmUp(schedules.CosineDecay(0.05, 40), 4), clip_norm=5.0)
    history = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), opt).fit(
        x, y, epochs=5, batch_size=16, verbose=False, seed=0)
    assert history["loss"][-1] < history["loss"][0] and opt.iterations == 20
    assert opt.last_grad_norm > 0
