"""CUDA C++ kernels next to the numba ones: sources, NVRTC, ptxas and SASS.

numba cannot reach tensor cores (mma.sync, ldmatrix) or cp.async, so those
kernels are CUDA C++ in ``kernels/cu/<name>.cu``, shipped inside the package
and read with importlib.resources. Everything here but ``load_module`` works
without a GPU: NVRTC (cuda.bindings, brought by numba-cuda[cu12]) compiles
for any architecture, ptxas -v reports the resource use of the PTX, and
nvdisasm (PATH, else the ``nvidia-cuda-nvdisasm`` wheel) turns a cubin into
SASS, where the tensor-core instructions can be checked by name.

    ptx = compile("gemm_mma", target="ptx")        # str
    cubin = compile("gemm_mma", target="cubin")    # bytes, sm_90 by default
    ptxas_report(ptx)      # {kernel: {"registers":..., "smem":..., "spill_stores":...}}
    sass_by_kernel(cubin)  # {kernel: SASS listing}
"""
from __future__ import annotations

import functools
import importlib.resources
import os
import re
import shutil
import subprocess
import tempfile

# NVRTC's own default is C++17 in CUDA 12, but spell it out: the sources use
# if constexpr, and a newer NVRTC must not change the dialect under them.
_BASE_OPTIONS = ("-std=c++17",)


class CompileError(RuntimeError):
    """NVRTC rejected a source; the message carries NVRTC's log."""


def _file(name):
    return name if name.endswith(".cu") else name + ".cu"


def source(name: str) -> str:
    """Text of kernels/cu/<name>.cu from the installed package."""
    res = importlib.resources.files("gpudl.kernels").joinpath("cu", _file(name))
    if not res.is_file():
        raise FileNotFoundError(f"no CUDA source {_file(name)!r} in gpudl.kernels/cu "
                                "(is it listed in pyproject's package-data?)")
    return res.read_text()


def _ok(result, what, prog=None):
    """The values after NVRTC's status code, or CompileError with the log."""
    from cuda.bindings import nvrtc
    if result[0] != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise CompileError(f"NVRTC {what} failed: {result[0].name}\n"
                           + (_log(prog) if prog is not None else ""))
    return result[1] if len(result) == 2 else result[1:]


def _log(prog):
    from cuda.bindings import nvrtc
    err, size = nvrtc.nvrtcGetProgramLogSize(prog)
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS or size <= 1:
        return ""
    buf = b" " * size
    nvrtc.nvrtcGetProgramLog(prog, buf)
    return buf.rstrip(b"\x00 ").decode(errors="replace")


def nvrtc_version():
    """(major, minor) of the NVRTC in use; raises ImportError without cuda.bindings."""
    from cuda.bindings import nvrtc
    return tuple(_ok(nvrtc.nvrtcVersion(), "version"))


@functools.lru_cache(maxsize=None)
def _compile(name, text, cc, target, options):
    from cuda.bindings import nvrtc
    if target not in ("ptx", "cubin"):
        raise ValueError(f"target must be 'ptx' or 'cubin', got {target!r}")
    # A cubin is machine code for exactly one architecture (sm_XY); PTX is
    # kept virtual (compute_XY) so the driver can JIT it for newer GPUs.
    arch = f"-arch={'sm' if target == 'cubin' else 'compute'}_{cc[0]}{cc[1]}"
    opts = [o.encode() for o in (arch,) + _BASE_OPTIONS + tuple(options)]
    prog = _ok(nvrtc.nvrtcCreateProgram(text.encode(), _file(name).encode(), 0, [], []),
               "create program")
    try:
        err = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CompileError(f"NVRTC could not compile {_file(name)} "
                               f"({' '.join(o.decode() for o in opts)}): {err.name}\n{_log(prog)}")
        if target == "ptx":
            buf = b" " * _ok(nvrtc.nvrtcGetPTXSize(prog), "PTX size", prog)
            _ok(nvrtc.nvrtcGetPTX(prog, buf) + (None,), "get PTX", prog)
            return buf.rstrip(b"\x00").decode()
        buf = b" " * _ok(nvrtc.nvrtcGetCUBINSize(prog), "CUBIN size", prog)
        _ok(nvrtc.nvrtcGetCUBIN(prog, buf) + (None,), "get CUBIN", prog)
        return bytes(buf)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def compile(name: str, cc=(9, 0), target="ptx", options=()):  # noqa: A001 (the NVRTC verb)
    """Compile kernels/cu/<name>.cu with NVRTC: PTX text (target="ptx", for
    compute_XY) or cubin bytes (target="cubin", for sm_XY). Cached per
    (source text, cc, target, options); a rejected source raises
    CompileError with NVRTC's log."""
    return _compile(name, source(name), tuple(cc), target, tuple(options))


# ---- ptxas -------------------------------------------------------------------
_ENTRY = re.compile(r"Compiling entry function '([^']+)'")


def split_ptxas_log(log: str) -> dict:
    """{kernel: its part of a ptxas -v log}; ptxas reports entry by entry."""
    marks = list(_ENTRY.finditer(log))
    return {m.group(1): log[m.start():marks[i + 1].start() if i + 1 < len(marks) else len(log)]
            for i, m in enumerate(marks)}


def ptxas_report(ptx: str, arch="sm_90") -> dict:
    """ptxas -v on one PTX module: {kernel: {"registers", "smem" (static
    bytes; dynamic shared memory is invisible to ptxas), "stack",
    "spill_stores", "spill_loads", "log"}}. Raises CompileError if ptxas
    rejects the PTX. Uses catalog's ptxas finder and log parser, so the
    numbers read the same as `make kernels-report`'s."""
    from . import catalog
    ptxas = catalog.find_ptxas()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([ptxas, f"-arch={arch}", "-v", src,
                               "-o", os.path.join(tmp, "k.cubin")], capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise CompileError(f"ptxas -arch={arch} failed:\n{log}")
    rows = {}
    for kernel, part in split_ptxas_log(log).items():
        rows[kernel] = dict(catalog._parse(part), log=part)
    return rows


# ---- SASS --------------------------------------------------------------------
def find_nvdisasm() -> str:
    """nvdisasm on PATH, else the one the nvidia-cuda-nvdisasm wheel installs
    (nvidia/cu13/bin or nvidia/cuda_nvdisasm/bin under site-packages)."""
    path = shutil.which("nvdisasm")
    if path:
        return path
    try:
        import nvidia
        for base in list(nvidia.__path__):
            for sub in ("cu13", "cu12", "cuda_nvdisasm"):
                cand = os.path.join(base, sub, "bin", "nvdisasm")
                if os.path.isfile(cand) and os.access(cand, os.X_OK):
                    return cand
    except ImportError:
        pass
    raise FileNotFoundError("nvdisasm not found: pip install nvidia-cuda-nvdisasm "
                            "(in the test extra) or put CUDA's bin on PATH")


def sass(cubin: bytes) -> str:
    """nvdisasm's listing of a cubin (instruction text, no control codes)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        proc = subprocess.run([find_nvdisasm(), "-c", path], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CompileError(f"nvdisasm failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


_SECTION = re.compile(r"^\s*\.section\s+\.text\.([A-Za-z_$][\w$]*)", re.M)


def sass_by_kernel(cubin: bytes) -> dict:
    """{function: its SASS}: nvdisasm puts each function in a .text.<name> section."""
    text = sass(cubin)
    marks = list(_SECTION.finditer(text))
    return {m.group(1): text[m.end():marks[i + 1].start() if i + 1 < len(marks) else len(text)]
            for i, m in enumerate(marks)}


def opcodes(listing: str) -> set:
    """Opcode stems in a SASS listing: 'HMMA.16816.F32.BF16' -> 'HMMA'."""
    return set(re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", listing))


# ---- real GPU ----------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def load_module(name: str, options=()):
    """cupy.RawModule of kernels/cu/<name>.cu for the current GPU (CuPy picks
    -arch and caches the binary); needs a GPU and CuPy."""
    import cupy  # a GPU-only dependency: imported here, not at module load
    return cupy.RawModule(code=source(name), options=_BASE_OPTIONS + tuple(options),
                          backend="nvrtc")
