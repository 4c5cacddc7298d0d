"""ONNX export: onnxruntime (CPU) runs the exported graph and gives predict's outputs."""
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import gpudl  # noqa: E402
from gpudl.layers import (AvgPool2D, BatchNorm, Concat, Conv2D, Conv2DTranspose, Dense,  # noqa: E402
                          DepthwiseConv2D, Dropout, Flatten, GlobalAvgPool2D, Layer, MaxPool2D,
                          Perceptron, ReLU, Residual, SeparableConv2D, Sigmoid, Softmax, Step,
                          Tanh)
from gpudl.onnx_export import to_onnx  # noqa: E402
from gpudl.zoo import MODELS  # noqa: E402

#: float32 rounding of a few hundred products; folded weights round differently
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(autouse=True)
def _cpu():
    gpudl.set_device("cpu")


def randomize(model, seed=0):
    """Non-trivial biases and batch norm statistics, so that folding (and a
    wrongly ordered mean/var) shows in the outputs."""
    rng = np.random.default_rng(seed)
    for layer in model.walk():
        if isinstance(layer, BatchNorm):
            c = layer.num_features
            layer.params["gamma"][:] = rng.uniform(0.5, 1.5, c)
            layer.params["beta"][:] = rng.normal(0, 0.5, c)
            layer.buffers["running_mean"][:] = rng.normal(0, 0.5, c)
            layer.buffers["running_var"][:] = rng.uniform(0.3, 2.0, c)
        elif not hasattr(layer, "chains"):
            for key in ("b",):
                if key in layer.params:
                    layer.params[key][:] = rng.normal(0, 0.2, layer.params[key].shape)
    return model


def run(proto, x):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x.astype(np.float32)})[0]


def check(model, shape=None, fold=(True, False), batches=(1, 3), seed=1):
    """The exported graph (the first of ``fold``'s) after comparing each
    fold_batchnorm mode's with predict on every batch size."""
    shape = tuple(shape or model.input_shape)
    rng = np.random.default_rng(seed)
    protos = []
    for fold_bn in fold:
        proto = to_onnx(model, input_shape=shape, fold_batchnorm=fold_bn)
        protos.append(proto)
        for n in batches:  # one graph, two batch sizes: the batch axis is dynamic
            x = rng.normal(size=(n,) + shape).astype(model.dtype)
            np.testing.assert_allclose(run(proto, x), model.predict(x), rtol=RTOL, atol=ATOL,
                                       err_msg=f"fold_batchnorm={fold_bn}, batch {n}")
    return protos[0]


def ops(proto):
    return [n.op_type for n in proto.graph.node]


def node(proto, name):
    return next(n for n in proto.graph.node if n.name == name)


def attr(n, key):
    return onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == key))


# ---- every zoo model
ZOO_SHAPES = {"mlp": (64,), "cnn": (1, 8, 8), "lenet": (1, 8, 8), "resnet": (3, 9, 9),
              "mobilenet": (3, 9, 9)}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_zoo_model_matches_predict(name):
    gpudl.manual_seed(0)
    model = randomize(MODELS[name][0](ZOO_SHAPES[name], 10))
    proto = check(model)
    assert "BatchNormalization" not in ops(proto)  # every zoo BatchNorm follows a conv
    has_bn = any(isinstance(layer, BatchNorm) for layer in model.walk())
    assert ("BatchNormalization" in ops(to_onnx(model, fold_batchnorm=False))) is has_bn
    graph = proto.graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in graph.initializer)
    names = {n.name for n in graph.node}
    assert {layer.name for layer in model.walk() if isinstance(layer, (Dense, Conv2D))} <= {
        n.split("+")[0] for n in names}


def test_folding_removes_batchnorm_and_names_both_layers():
    gpudl.manual_seed(0)
    model = randomize(MODELS["resnet"][0]((3, 8, 8), 10))
    folded = to_onnx(model, fold_batchnorm=True)
    assert "BatchNormalization" not in ops(folded)
    assert node(folded, "conv2d+batchnorm").op_type == "Conv"
    kept = to_onnx(model, fold_batchnorm=False)
    bns = sum(isinstance(layer, BatchNorm) for layer in model.walk())
    assert bns == 9 and ops(kept).count("BatchNormalization") == bns
    assert attr(node(kept, "batchnorm"), "epsilon") == pytest.approx(1e-5)


def test_batchnorm_without_a_layer_to_fold_into():
    """First in the model, after a pooling, on (N, C) after a dense layer's ReLU."""
    gpudl.manual_seed(0)
    model = randomize(gpudl.Sequential([
        BatchNorm(2), Conv2D(2, 4, 3), MaxPool2D(2), BatchNorm(4), Flatten(), Dense(36, 5),
        ReLU(), BatchNorm(5), Dense(5, 3), BatchNorm(3)], input_shape=(2, 8, 8)))
    proto = check(model, fold=(True,))
    assert ops(proto).count("BatchNormalization") == 3  # the last one folds into the Dense


# ---- "same" padding: the odd extra row/column at the bottom/right
@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("k,stride", [(2, 1), (4, 2), (3, 2)])
def test_same_padding_asymmetric(size, k, stride):
    gpudl.manual_seed(0)
    conv = Conv2D(2, 3, k, stride=stride, padding="same")
    model = randomize(gpudl.Sequential([conv], input_shape=(2, size, size + 1)))
    proto = check(model)
    top, bottom, left, right = conv.pads((size, size + 1))
    pads = attr(node(proto, "conv2d"), "pads")
    assert pads == [top, left, bottom, right]


def test_asymmetric_pads_really_are_asymmetric():
    """The geometry where the extra goes bottom/right: a test that can fail."""
    conv = Conv2D(1, 1, 2, stride=1, padding="same")
    model = randomize(gpudl.Sequential([conv], input_shape=(1, 5, 6)))
    pads = attr(node(to_onnx(model), "conv2d"), "pads")
    assert pads == [0, 0, 1, 1]  # [top, left, bottom, right]
    conv = Conv2D(1, 1, 3, stride=2, padding="same")
    model = randomize(gpudl.Sequential([conv], input_shape=(1, 6, 6)))
    assert attr(node(check(model), "conv2d"), "pads") == [0, 0, 1, 1]


# ---- the other layers
@pytest.mark.parametrize("stride,padding,output_padding", [(2, 1, 1), (2, 0, 1), (3, 1, 2),
                                                           (1, 1, 0)])
def test_conv_transpose(stride, padding, output_padding):
    gpudl.manual_seed(0)
    model = randomize(gpudl.Sequential([
        Conv2DTranspose(3, 4, 3, stride=stride, padding=padding, output_padding=output_padding),
        BatchNorm(4), ReLU()], input_shape=(3, 5, 4)))
    proto = check(model)
    assert attr(node(proto, "conv2dtranspose+batchnorm"), "output_padding") == [output_padding] * 2


def test_pools_with_padding():
    gpudl.manual_seed(0)
    model = randomize(gpudl.Sequential([
        Conv2D(1, 3, 3), MaxPool2D(3, stride=2, padding=1), AvgPool2D(3, stride=1, padding=1),
        AvgPool2D((2, 3), stride=(1, 2), padding=(1, 1)), GlobalAvgPool2D(), Dense(3, 2)],
        input_shape=(1, 9, 9)))
    proto = check(model)
    assert attr(node(proto, "avgpool2d"), "count_include_pad") == 0
    assert attr(node(proto, "maxpool2d"), "pads") == [1, 1, 1, 1]


def test_concat_and_residual_with_and_without_shortcut():
    gpudl.manual_seed(0)
    model = randomize(gpudl.Sequential([
        Conv2D(2, 4, 3, padding="same"),
        Concat([Conv2D(4, 3, 1), [Conv2D(4, 2, 3, padding="same"), BatchNorm(2)], None]),
        Residual([Conv2D(9, 9, 3, padding="same"), BatchNorm(9), ReLU()]),
        Residual([Conv2D(9, 6, 3, stride=2, padding="same")],
                 shortcut=[Conv2D(9, 6, 1, stride=2), BatchNorm(6)]),
        Residual([Conv2D(6, 2, 1)], merge="concat"),
        GlobalAvgPool2D(), Dense(8, 3)], input_shape=(2, 7, 7)))
    proto = check(model)
    assert ops(proto).count("Concat") == 2 and ops(proto).count("Add") == 2


def test_separable_and_depthwise():
    gpudl.manual_seed(0)
    model = randomize(gpudl.Sequential([
        SeparableConv2D(3, 5, 3, stride=2, padding="same"), BatchNorm(5), ReLU(),
        DepthwiseConv2D(5, 2, padding="same", depth_multiplier=2), BatchNorm(10),
        SeparableConv2D(10, 4, 3, padding=1, bias=False), Flatten(), Dense(64, 3)],
        input_shape=(3, 8, 7)))
    proto = check(model)
    assert attr(node(proto, "depthwiseconv2d+batchnorm_1"), "group") == 5


def test_activations_dropout_and_float64():
    gpudl.manual_seed(0)
    f64 = np.float64
    model = randomize(gpudl.Sequential([
        Dense(6, 8, dtype=f64), Tanh(), Dropout(0.5), Dense(8, 8, dtype=f64), Sigmoid(),
        Dense(8, 4, dtype=f64), Softmax()]))
    model.train()  # the export is of the inference network whatever the mode
    proto = check(model)
    assert "Dropout" not in ops(proto) and ops(proto)[-1] == "Softmax"
    # float64 weights export as float32
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in proto.graph.initializer)


def test_step_and_perceptron():
    gpudl.manual_seed(0)
    model = randomize(gpudl.Sequential([Dense(4, 3), Step(), Perceptron(3)]))
    check(model)


def test_identity_model_and_output_named_output():
    proto = check(gpudl.Sequential([Dropout(0.2)], input_shape=(4,)))
    assert [o.name for o in proto.graph.output] == ["output"]


# ---- errors
def test_opset_below_17_is_refused():
    model = gpudl.Sequential([Dense(3, 2)])
    with pytest.raises(ValueError, match="opset 16 is not supported.*17 or later"):
        to_onnx(model, opset=16)
    assert to_onnx(model, opset=18).opset_import[0].version == 18


def test_unknown_layer_is_named_and_nothing_is_written(tmp_path):
    class Scale(Layer):
        def forward(self, x, training=False):
            return x * 2

    model = gpudl.Sequential([Dense(3, 3), Scale(name="twice"), ReLU()], input_shape=(3,))
    out = tmp_path / "m.onnx"
    with pytest.raises(NotImplementedError, match=r"layer 'twice' \(.*Scale\) has no ONNX"):
        model.export_onnx(out)
    assert list(tmp_path.iterdir()) == []
    # a subclass of a supported layer may compute something else: refused too
    class MyReLU(ReLU):
        pass
    with pytest.raises(NotImplementedError, match="MyReLU"):
        to_onnx(gpudl.Sequential([Dense(3, 3), MyReLU()]))


def test_no_input_shape():
    model = gpudl.Sequential([Conv2D(1, 2, 3), Flatten()])
    with pytest.raises(gpudl.ShapeError, match="input shape is unknown.*input_shape="):
        to_onnx(model)
    with pytest.raises(gpudl.ShapeError, match="expects input of shape"):
        to_onnx(model, input_shape=(3, 5, 5))
    assert len(to_onnx(model, input_shape=(1, 5, 5)).graph.node) == 2


def test_unwritable_path_and_atomic_write(tmp_path, monkeypatch):
    model = gpudl.Sequential([Dense(3, 2)])
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="export_onnx: cannot write"):
        model.export_onnx(blocker / "m.onnx")
    with pytest.raises(IsADirectoryError):
        model.export_onnx(tmp_path)
    # a write that fails half-way leaves the old file as it was and no temporary
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    import onnx as onnx_mod

    def fail(self):
        raise RuntimeError("disk full")
    monkeypatch.setattr(onnx_mod.ModelProto, "SerializeToString", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        model.export_onnx(target)
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "m.onnx"]
    model.export_onnx(target)
    onnx.checker.check_model(onnx.load(str(target)), full_check=True)
    assert oct(os.stat(target).st_mode & 0o777) == oct(os.stat(blocker).st_mode & 0o777)


# ---- the command line
def test_cli_export_model_file_and_checkpoint(tmp_path, capsys):
    from gpudl.cli import main
    gpudl.manual_seed(0)
    model = randomize(MODELS["mobilenet"][0]((1, 8, 8), 10))
    model.save(tmp_path / "m.npz")
    out = tmp_path / "m.onnx"
    assert main(["export", str(tmp_path / "m.npz"), str(out), "--format", "onnx"]) == 0
    assert "wrote" in capsys.readouterr().out
    x = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], model.predict(x),
                               rtol=RTOL, atol=ATOL)
    assert "BatchNormalization" not in ops(onnx.load(str(out)))
    # a checkpoint's model, batch norm kept
    from gpudl.checkpoint import save_checkpoint
    trainer = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.01))
    trainer.fit(np.concatenate([x, x]), np.arange(4), epochs=1, batch_size=4, verbose=False)
    save_checkpoint(tmp_path / "run.ckpt", trainer)
    assert main(["export", str(tmp_path / "run.ckpt"), str(out), "--no-fold-batchnorm",
                 "--opset", "18"]) == 0
    proto = onnx.load(str(out))
    assert "BatchNormalization" in ops(proto) and proto.opset_import[0].version == 18
    np.testing.assert_allclose(run(proto, x), model.predict(x), rtol=RTOL, atol=ATOL)


def test_cli_export_errors(tmp_path, capsys):
    from gpudl.cli import main
    gpudl.Sequential([Conv2D(1, 2, 3), Flatten()]).save(tmp_path / "m.npz")
    out = str(tmp_path / "m.onnx")
    cases = [(["--opset", "16"], "--opset: must be >= 17, got 16"),
             (["--format", "tflite"], "--format: invalid choice"),
             (["--input-shape", "1,x"], "--input-shape: expected positive sizes"),
             ([], "does not record its input shape: pass --input-shape")]
    for extra, message in cases:
        assert main(["export", str(tmp_path / "m.npz"), out] + extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.startswith("gpudl export: error:"), err
    assert main(["export", str(tmp_path / "none.npz"), out]) == 2
    assert "no model file at" in capsys.readouterr().err
    assert not os.path.exists(out)
    assert main(["export", str(tmp_path / "m.npz"), out, "--input-shape", "1x6x6"]) == 0
    assert os.path.exists(out)


def test_import_gpudl_and_its_cli_do_not_import_onnx():
    import subprocess
    import sys
    code = ("import sys, gpudl, gpudl.cli\ngpudl.cli.make_parser()\n"
            "print([m for m in ('onnx', 'onnxruntime', 'gpudl.onnx_export') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.strip()
    assert out == "[]"
