"""``gpudl export MODEL_FILE OUT --format onnx``: a saved model (Sequential.save)
or a checkpoint's model, written as an ONNX graph of its inference network."""
from __future__ import annotations

import argparse

from .cli_train import UsageError

FORMATS = ("onnx",)


def _shape(text):
    """"1,28,28" or "1x28x28" -> (1, 28, 28)."""
    parts = text.replace("x", ",").split(",")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive sizes such as 1,28,28, got {text!r}")
    return dims


def _opset(text):
    from .onnx_export import MIN_OPSET
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < MIN_OPSET:
        raise argparse.ArgumentTypeError(f"must be >= {MIN_OPSET}, got {text}")
    return value


def add_export_parser(sub):
    e = sub.add_parser("export", help="write a saved model or a checkpoint's model as ONNX")
    e.add_argument("model_file", metavar="MODEL_FILE",
                   help="a model file (Sequential.save, gpudl train --save) or a checkpoint")
    e.add_argument("out", metavar="OUT", help="the file to write, e.g. model.onnx")
    e.add_argument("--format", default="onnx", choices=FORMATS, help="onnx (the default)")
    e.add_argument("--input-shape", type=_shape, default=None, metavar="C,H,W",
                   help="per-sample input shape (default: the model's own)")
    e.add_argument("--opset", type=_opset, default=17, help="ONNX opset, 17 or later (default 17)")
    e.add_argument("--no-fold-batchnorm", action="store_true",
                   help="keep batch norm as BatchNormalization nodes instead of folding it "
                        "into the convolution or dense layer before it")
    e.set_defaults(run=cmd_export)


def load_any(path):
    """The model in a model file or, failing that, in a checkpoint; the model
    file's error when it is neither."""
    from .checkpoint import read_checkpoint, set_state_arrays
    from .errors import ModelFileError
    from .layers.serialize import layer_from_spec
    from .model import Sequential, load
    try:
        return load(path, device="cpu")
    except ModelFileError as first:
        try:
            meta, arrays = read_checkpoint(path)
        except ModelFileError:
            raise first from None
    config = meta["model"]
    model = Sequential([layer_from_spec(s) for s in config["layers"]],
                       input_shape=config.get("input_shape")).to("cpu")
    prefix = "model."
    set_state_arrays(model, {k[len(prefix):]: v for k, v in arrays.items()
                             if k.startswith(prefix)}, where=path)
    return model


def cmd_export(args) -> int:
    import os
    import sys

    from .onnx_export import export_onnx
    if os.path.abspath(args.out) == os.path.abspath(args.model_file):
        raise UsageError("OUT is MODEL_FILE: give another file to write")
    model = load_any(args.model_file)
    shape = args.input_shape or model.input_shape
    if shape is None:
        raise UsageError("the model file does not record its input shape: pass --input-shape, "
                         "e.g. --input-shape 1,28,28")
    try:
        proto = export_onnx(model, args.out, input_shape=shape, opset=args.opset,
                            fold_batchnorm=not args.no_fold_batchnorm)
    except (NotImplementedError, ImportError) as e:
        raise UsageError(str(e)) from None
    except OSError as e:  # OUT cannot be written: not a usage error, so no pointer to --help
        print(f"gpudl export: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: ONNX opset {args.opset}, {len(proto.graph.node)} nodes, input "
          f"(N, {', '.join(map(str, shape))}), output (N, "
          f"{', '.join(map(str, model.output_shape(shape)))})")
    return 0
