"""Image augmentation (gpudl.augment) on the CPU backend, the reference."""
import numpy as np
import pytest

import gpudl
from gpudl.augment import Augment, affine_theta, draw
from gpudl.errors import ShapeError
from gpudl.layers import Conv2D, Dense, Flatten, ReLU


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")


def images(shape, dtype=np.float32, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape) + 2.0  # never the fill value 0
    return x.astype(dtype)


def shifted(img, dy, dx):
    """img (C, H, W) moved down by dy and right by dx, zeros where it left."""
    out = np.zeros_like(img)
    h, w = img.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        img[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [{}, {"shift": 2}, {"flip": True}, {"rotate": 15.0},
                                {"shift": 1, "flip": True, "rotate": 30.0, "fill": -1.0}])
def test_shape_and_dtype_preserved_new_array(dtype, kw):
    x = images((5, 3, 7, 6), dtype)
    y = Augment(seed=1, **kw)(x, 0)
    assert y.shape == x.shape and y.dtype == dtype and y is not x
    assert y.flags.c_contiguous and np.isfinite(y).all()


def test_identity_without_options():
    x = images((4, 2, 5, 7))
    y = Augment(seed=3)(x, 7)
    np.testing.assert_array_equal(y, x)
    y[...] = 0
    assert (x != 0).all()  # a copy, never a view of the input


def test_seeded_same_step_same_batch_other_steps_and_seeds_differ():
    x = images((16, 1, 8, 8))
    a = Augment(shift=2, flip=True, rotate=10, seed=5)
    b = Augment(shift=2, flip=True, rotate=10, seed=5)
    first = a(x, 3)
    np.testing.assert_array_equal(first, b(x, 3))
    np.testing.assert_array_equal(first, a(x, 3))
    assert not np.array_equal(first, a(x, 4))
    assert not np.array_equal(first, Augment(shift=2, flip=True, rotate=10, seed=6)(x, 3))
    gpudl.manual_seed(11)
    s1 = Augment(shift=1).seed
    gpudl.manual_seed(11)
    assert Augment(shift=1).seed == s1


def test_draws_per_sample_do_not_depend_on_batch_size_or_other_options():
    dy, dx, fl, ang = draw(9, 2, 40, shift=3, flip=True, rotate=20)
    dy2, dx2, fl2, ang2 = draw(9, 2, 10, shift=3, flip=False, rotate=0)
    np.testing.assert_array_equal(dy[:10], dy2)
    np.testing.assert_array_equal(dx[:10], dx2)
    assert not fl2.any() and (ang2 == 0).all()
    dy, dx, fl, ang = draw(1, 0, 4000, shift=2, flip=True, rotate=20)
    assert set(dy) == set(dx) == {-2, -1, 0, 1, 2}
    assert 0.45 < fl.mean() < 0.55
    assert ang.min() >= -20 and ang.max() <= 20 and ang.min() < -19 and ang.max() > 19


@pytest.mark.parametrize("shift", [1, 3])
def test_shift_only_is_an_integer_translation_with_zero_fill(shift):
    x = images((12, 2, 6, 5))
    y = Augment(shift=shift, seed=2)(x, 1)
    offsets = [(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)]
    seen = set()
    for n in range(x.shape[0]):
        found = [o for o in offsets if np.array_equal(y[n], shifted(x[n], *o))]
        assert len(found) == 1, f"sample {n} is no shift of its input within {shift}"
        seen.add(found[0])
    assert len(seen) > 1


def test_fill_value_and_pad_crop_equivalence():
    x = images((6, 3, 5, 5))
    aug = Augment(shift=2, seed=4, fill=-3.5)
    y = aug(x, 0)
    dy, dx, _, _ = aug.params(6, 0)
    for n in range(6):  # pad by 2 with fill, crop H x W at offset (2 - dy, 2 - dx)
        padded = np.pad(x[n], ((0, 0), (2, 2), (2, 2)), constant_values=-3.5)
        np.testing.assert_array_equal(y[n], padded[:, 2 - dy[n]:7 - dy[n], 2 - dx[n]:7 - dx[n]])


def test_flip_only_is_identity_or_mirror():
    x = images((20, 3, 4, 5))
    y = Augment(flip=True, seed=8)(x, 2)
    mirrored = [np.array_equal(y[n], x[n, :, :, ::-1]) for n in range(20)]
    same = [np.array_equal(y[n], x[n]) for n in range(20)]
    assert all(m != s for m, s in zip(mirrored, same))
    assert 0 < sum(mirrored) < 20


@pytest.mark.parametrize("k", [1, -1, 2])
@pytest.mark.parametrize("hw", [5, 6])
def test_quarter_turns_match_rot90(k, hw):
    x = images((3, 2, hw, hw), np.float64)
    theta = affine_theta(hw, hw, [0] * 3, [0] * 3, [False] * 3, [90.0 * k] * 3)
    y = gpudl.get_backend().augment_affine(x, theta, 0.0)
    np.testing.assert_allclose(y, np.rot90(x, k, axes=(2, 3)), atol=1e-12)
    x32 = x.astype(np.float32)
    y32 = gpudl.get_backend().augment_affine(x32, theta, 0.0)
    np.testing.assert_allclose(y32, np.rot90(x32, k, axes=(2, 3)), atol=1e-5)


def test_rotate_90_through_augment_draws_angles_in_range():
    x = images((8, 1, 5, 5), np.float64)
    aug = Augment(rotate=90, seed=3)
    y = aug(x, 0)
    _, _, _, angle = aug.params(8, 0)
    assert (np.abs(angle) <= 90).all()
    for n in range(8):  # each sample is its own rotation, composed by hand
        th = affine_theta(5, 5, [0], [0], [False], [angle[n]])
        np.testing.assert_array_equal(y[n:n + 1], gpudl.get_backend().augment_affine(
            x[n:n + 1], th, 0.0))


def test_small_rotation_keeps_the_centre_and_moves_the_corners():
    x = images((1, 1, 7, 7), np.float64)
    y = gpudl.get_backend().augment_affine(x, affine_theta(7, 7, [0], [0], [False], [20.0]), 0.0)
    assert y[0, 0, 3, 3] == pytest.approx(x[0, 0, 3, 3], abs=1e-12)
    assert not np.allclose(y, x)
    # bilinear of a linear ramp is exact: a rotated ramp is the ramp of rotated coordinates
    i, j = np.mgrid[0:7, 0:7].astype(np.float64)
    ramp = (2 * i + j)[None, None]
    r = np.deg2rad(20.0)
    sy = 3 + np.cos(r) * (i - 3) + np.sin(r) * (j - 3)
    sx = 3 - np.sin(r) * (i - 3) + np.cos(r) * (j - 3)
    inside = (sy >= 0) & (sy <= 6) & (sx >= 0) & (sx <= 6)
    got = gpudl.get_backend().augment_affine(ramp, affine_theta(7, 7, [0], [0], [False], [20.0]))
    np.testing.assert_allclose(got[0, 0][inside], (2 * sy + sx)[inside], atol=1e-12)


def test_bad_arguments_raise_clear_errors():
    for kw, match in [({"shift": -1}, "shift"), ({"shift": 1.5}, "shift"),
                      ({"shift": True}, "shift"),
                      ({"rotate": -1.0}, "rotate"), ({"rotate": 181}, "rotate"),
                      ({"rotate": "10"}, "rotate"), ({"flip": 1}, "flip"),
                      ({"fill": float("nan")}, "fill"), ({"seed": 1.5}, "seed")]:
        with pytest.raises(ValueError, match=match):
            Augment(**kw)
    aug = Augment(shift=1, seed=0)
    for shape in [(4, 5), (2, 4, 5), (1, 2, 3, 4, 5)]:
        with pytest.raises(ShapeError, match=r"\(N, C, H, W\).*" + str(len(shape)) + "-D"):
            aug(np.zeros(shape, np.float32), 0)
    with pytest.raises(ValueError, match="step"):
        aug(images((1, 1, 3, 3)), -1)
    be = gpudl.get_backend()
    with pytest.raises(ShapeError, match="theta"):
        be.augment_affine(images((2, 1, 3, 3)), np.zeros((3, 6)))
    with pytest.raises(TypeError, match="float"):
        be.augment_affine(np.zeros((1, 1, 3, 3), np.int64), np.zeros((1, 6)))


def test_get_config_round_trips():
    aug = Augment(shift=2, flip=True, rotate=12.5, seed=42, fill=0.25)
    assert aug.get_config() == {"shift": 2, "flip": True, "rotate": 12.5, "seed": 42,
                                "fill": 0.25}
    again = Augment(**aug.get_config())
    x = images((3, 1, 6, 6))
    np.testing.assert_array_equal(again(x, 5), aug(x, 5))
    assert "shift=2" in repr(aug)


def _tiny_conv():
    return gpudl.Sequential([Conv2D(1, 3, 3, padding="same"), ReLU(), Flatten(),
                             Dense(3 * 6 * 6, 2)])


def test_trainer_fit_with_augment_runs_and_is_reproducible():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 1, 6, 6)).astype(np.float32)
    y = (x[:, 0, :, :3].sum(axis=(1, 2)) > 0).astype(np.int64)

    def run(augment):
        gpudl.manual_seed(0)
        model = _tiny_conv()
        trainer = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.05))
        history = trainer.fit(x, y, epochs=2, batch_size=8, seed=0, verbose=False, augment=augment)
        return model, history

    steps = []
    aug = Augment(shift=1, flip=True, seed=0)

    def recording(xb, step):
        steps.append(step)
        return aug(xb, step)

    a, ha = run(recording)
    assert steps == list(range(6))  # 3 batches per epoch, 2 epochs, keyed by optimizer step
    b, hb = run(Augment(shift=1, flip=True, seed=0))
    assert np.isfinite(ha["loss"]).all() and ha["loss"] == hb["loss"]
    for k, v in a.state_arrays().items():
        np.testing.assert_array_equal(v, b.state_arrays()[k])
    plain, _ = run(None)
    assert any(not np.array_equal(v, plain.state_arrays()[k]) for k, v in a.state_arrays().items())
