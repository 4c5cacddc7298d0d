"""A user's Layer subclass saves and loads: gpudl.layers.register, or
custom_objects= in gpudl.load (also for layers nested in containers)."""
import numpy as np
import pytest

import gpudl
from gpudl.errors import ModelFileError
from gpudl.layers import LAYER_TYPES, Layer


@pytest.fixture(autouse=True)
def clean_registry():
    saved = dict(LAYER_TYPES)
    gpudl.set_device("cpu")
    yield
    LAYER_TYPES.clear()
    LAYER_TYPES.update(saved)


def _scale_class():
    class Scale(Layer):
        """y = x * w, one trainable weight per feature."""

        def __init__(self, features, init=2.0, name=None):
            super().__init__(name)
            self.features, self.init = features, init
            self.params["w"] = self.backend.asarray(np.full(features, init, np.float32))
            self.grads["w"] = self.backend.zeros((features,), np.float32)

        def get_config(self):
            return {**super().get_config(), "features": self.features, "init": self.init}

        def forward(self, x, training=False):
            self._x = x
            return x * self.params["w"]

        def backward(self, grad, need_input_grad=True):
            self.grads["w"][...] = (grad * self._x).sum(axis=0)
            return grad * self.params["w"]
    return Scale


def _model(scale_cls, nested=False):
    gpudl.manual_seed(0)
    inner = scale_cls(4, init=1.5)
    layers = [gpudl.layers.Residual([inner])] if nested else [inner]
    return gpudl.Sequential(layers + [gpudl.layers.Dense(4, 3)], input_shape=(4,))


def _train(model):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 4)).astype(np.float32)
    trainer = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.1))
    trainer.fit(x, rng.integers(0, 3, 20), epochs=2, batch_size=5, verbose=False)
    return x


def test_a_registered_layer_saves_and_loads(tmp_path):
    Scale = gpudl.layers.register(_scale_class())
    model = _model(Scale)
    x = _train(model)
    assert not np.allclose(model.layers[0].params["w"], 1.5)   # it trained
    model.save(tmp_path / "m.npz")
    loaded = gpudl.load(tmp_path / "m.npz")
    assert type(loaded.layers[0]) is Scale and loaded.layers[0].init == 1.5
    np.testing.assert_array_equal(loaded.layers[0].params["w"], model.layers[0].params["w"])
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


@pytest.mark.parametrize("nested", [False, True])
def test_custom_objects_for_an_unregistered_layer(tmp_path, nested):
    Scale = _scale_class()
    model = _model(Scale, nested)
    x = _train(model)
    model.save(tmp_path / "m.npz")
    with pytest.raises(ModelFileError, match=r"unknown layer type 'Scale'.*register.*"
                                             r"custom_objects"):
        gpudl.load(tmp_path / "m.npz")
    loaded = gpudl.load(tmp_path / "m.npz", custom_objects={"Scale": Scale})
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert "Scale" not in LAYER_TYPES   # custom_objects is for that load only
    with pytest.raises(ModelFileError, match="unknown layer type 'Scale'"):
        gpudl.load(tmp_path / "m.npz")


def test_register_checks():
    with pytest.raises(TypeError, match="Layer subclass"):
        gpudl.layers.register(int)
    with pytest.raises(TypeError, match=r"custom_objects\['x'\]"):
        gpudl.layers.serialize.layer_from_spec({"type": "x", "config": {}}, {"x": object})

    class Dense(Layer):   # a different class under a built-in's name
        pass
    with pytest.raises(ValueError, match="'Dense' is taken"):
        gpudl.layers.register(Dense)
    assert gpudl.layers.register(name="MyDense")(Dense) is Dense
    assert LAYER_TYPES["MyDense"] is Dense and LAYER_TYPES["Dense"] is gpudl.layers.Dense
    Scale = _scale_class()
    assert gpudl.layers.register(gpudl.layers.register(Scale)) is Scale  # again: fine
