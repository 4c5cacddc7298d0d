"""Runs only where the CUDA backend can: numba's simulator or a real GPU.

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda -q     # no GPU needed
    python -m pytest tests/cuda -q                            # on a GPU machine

The simulator must be switched on before numba is imported, so it cannot be
turned on from here: run these tests in their own pytest process.
"""
import sys
import threading

import pytest

from gpudl.backend import gpu_available, simulator_enabled

CAN_RUN = simulator_enabled() or gpu_available()


def _lock_simulated_shared_arrays():
    """numba's simulator (seen in numba-cuda 0.30.4) creates a block's shared
    array on first use without a lock: two simulated threads can each make
    their own copy, and the block then computes garbage now and then. Create
    them under a lock, keyed like the simulator keys them (the calling line)."""
    import numpy as np
    from numba import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support
    original = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory, or an error
            return original(self, shape, dtype, alignment)
        frame = sys._getframe(1)
        key = (frame.f_code.co_filename, frame.f_lineno)
        with lock:
            found = self._allocations.get(key)
            if found is None:
                if isinstance(dtype, types.Type):
                    dtype = numpy_support.as_dtype(dtype)
                found = self._allocations[key] = np.empty(shape, dtype)
        return found

    kernelapi.FakeCUDAShared.array = array


if simulator_enabled():
    _lock_simulated_shared_arrays()


def pytest_collection_modifyitems(config, items):
    if CAN_RUN:
        return
    skip = pytest.mark.skip(reason="CUDA backend unavailable: no GPU visible to CuPy and "
                                   "NUMBA_ENABLE_CUDASIM is not set")
    here = __file__.rsplit("/", 1)[0]
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def be():
    from gpudl.backend.cuda import CUDABackend
    return CUDABackend(simulator=simulator_enabled())


@pytest.fixture(scope="session")
def cpu():
    from gpudl.backend.cpu import CPUBackend
    return CPUBackend()
