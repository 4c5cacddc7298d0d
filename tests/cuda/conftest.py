"""Runs only where the CUDA backend can: numba's simulator or a real GPU.

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda -q     # no GPU needed
    python -m pytest tests/cuda -q                            # on a GPU machine

The simulator must be switched on before numba is imported, so it cannot be
turned on from here: run these tests in their own pytest process.
"""
import pytest

from gpudl.backend import gpu_available, simulator_enabled

CAN_RUN = simulator_enabled() or gpu_available()


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
