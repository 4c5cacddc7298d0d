"""What the CUDA C++ compile checks need, found once: NVRTC, ptxas and
nvdisasm (no GPU). Each NO_* is None when the tool is there, else why not;
the needs_* marks skip a test with that reason."""
import pytest

from gpudl.kernels import catalog, cuda_cpp


def _missing(find, errors):
    try:
        find()
    except errors as e:
        return str(e)
    return None


NO_NVRTC = _missing(cuda_cpp.nvrtc_version, Exception)  # ImportError, or no NVRTC library
if NO_NVRTC is not None:
    NO_NVRTC = f"NVRTC unavailable (install numba-cuda[cu12]): {NO_NVRTC}"
NO_PTXAS = _missing(catalog.find_ptxas, FileNotFoundError)
NO_NVDISASM = _missing(cuda_cpp.find_nvdisasm, FileNotFoundError)

needs_nvrtc = pytest.mark.skipif(NO_NVRTC is not None, reason=NO_NVRTC or "")
needs_ptxas = pytest.mark.skipif(NO_PTXAS is not None, reason=NO_PTXAS or "")
needs_nvdisasm = pytest.mark.skipif(NO_NVDISASM is not None, reason=NO_NVDISASM or "")
