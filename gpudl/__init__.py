"""gpudl: a small deep-learning framework with readable, hand-written CUDA kernels.

    import gpudl
    gpudl.set_device("auto")           # "cpu", "cuda", or GPUDL_DEVICE
    model = gpudl.Sequential([gpudl.layers.Dense(64, 32), gpudl.layers.ReLU(),
                              gpudl.layers.Dense(32, 10)])
    trainer = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.1))
    history = trainer.fit(x, y, epochs=10, batch_size=32)
"""
from . import callbacks, checkpoint, data, history, layers, losses, optim, precision, zoo
from .convmatrix import conv_matrix
from .backend import get_backend, get_device, gpu_available, set_device
from .errors import DeviceError, GpudlError, ModelFileError, ShapeError
from .layers import manual_seed
from .model import Sequential, load
from .precision import get_precision, set_precision
from .profile import profile
from .train import Trainer

__version__ = "0.1.0"

#: submodules imported on first use (gpudl.datasets...), so `import gpudl` stays quick
_LAZY = ("augment", "averaging", "datasets", "demos", "gradcheck", "metrics")


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

__all__ = ["set_device", "get_device", "get_backend", "gpu_available", "Sequential", "load",
           "Trainer", "conv_matrix", "set_precision", "get_precision", "precision", "layers", "losses", "optim", "data", "zoo", "callbacks",
           "checkpoint", "history", "manual_seed", "GpudlError",
           "ShapeError", "DeviceError", "ModelFileError", "__version__"]
