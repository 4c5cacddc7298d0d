"""Device selection: one current backend, chosen by set_device or GPUDL_DEVICE."""
from __future__ import annotations

import os

from ..errors import DeviceError
from .base import Backend
from .cpu import CPUBackend

DEVICES = ("auto", "cpu", "cuda")

_current: Backend | None = None


def simulator_enabled() -> bool:
    """True when numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def gpu_available() -> bool:
    """True when CuPy is installed and sees at least one GPU."""
    if simulator_enabled():
        return False
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device: all mean "no GPU"
        return False


def _make(device: str) -> Backend:
    if not isinstance(device, str) or device.lower() not in DEVICES:
        raise DeviceError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    device = device.lower()
    if device == "auto":
        device = "cuda" if gpu_available() else "cpu"
    if device == "cpu":
        return CPUBackend()
    if not (gpu_available() or simulator_enabled()):
        raise DeviceError(
            "device 'cuda' was asked for but no GPU is visible to CuPy "
            "(install gpudl[cuda12] or gpudl[cuda13] on a machine with an NVIDIA GPU, "
            "set NUMBA_ENABLE_CUDASIM=1 to run the CUDA backend in numba's simulator, "
            "or use device 'cpu')")
    from .cuda import CUDABackend
    return CUDABackend(simulator=simulator_enabled())


def set_device(device: str = "auto") -> Backend:
    """Choose the backend for new arrays and ops: "auto", "cpu" or "cuda"."""
    global _current
    _current = _make(device)
    return _current


def get_backend() -> Backend:
    """The current backend; the first call takes GPUDL_DEVICE (default "auto")."""
    global _current
    if _current is None:
        _current = _make(os.environ.get("GPUDL_DEVICE", "auto") or "auto")
    return _current


def get_device() -> str:
    return get_backend().name


__all__ = ["Backend", "CPUBackend", "set_device", "get_backend", "get_device",
           "gpu_available", "simulator_enabled", "DEVICES"]
