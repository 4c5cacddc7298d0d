"""Host time per small kernel launch: numba's plain launch, FastLauncher, CuPy.

N back-to-back launches of a 3-array elementwise kernel (out = a * b,
gpudl.kernels.dropout.multiply) on 1K float32 elements, on CuPy's current
stream: host microseconds per launch (perf_counter around the loop, before
the sync) and GPU microseconds per launch (CUDA events around the loop).
Before timing, it checks on the GPU that FastLauncher's types and flattened
arguments equal numba's for a set of CuPy arrays, and that its results equal
the plain launch's bit for bit (on the null stream and on a created one).
Needs a GPU; without one it says so and exits 0.
Usage: python -m benchmarks.launch_overhead [--n 2000] [--size 1024] [--json PATH]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time

import numpy as np

# As gpudl.backend.cuda sets them, before numba is first imported.
os.environ.setdefault("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", "0")
os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")

from .common import gpu_name, record  # noqa: E402

THREADS = 256
RAW_SOURCE = r"""
extern "C" __global__ void gpudl_mul(const float* a, const float* b, float* out, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        out[i] = a[i] * b[i];
}
"""


def no_gpu_reason():
    from gpudl.backend import simulator_enabled
    if simulator_enabled():
        return "NUMBA_ENABLE_CUDASIM is set"
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no GPU"
    except Exception as e:  # no driver
        return f"CuPy sees no GPU ({e.__class__.__name__})"
    return None


def numba_stream(cupy):
    """The numba stream for CuPy's current stream, as CUDABackend._stream makes it."""
    from numba import cuda
    ptr = cupy.cuda.get_current_stream().ptr
    return cuda.default_stream() if ptr == 0 else cuda.external_stream(ptr)


def comparable(values):
    return [(type(v), v.value) if isinstance(v, ctypes._SimpleCData) else (type(v), v)
            for v in values]


def check_types_and_args(cupy, launcher):
    """numba's typeof and _Kernel._prepare_args on real CuPy arrays vs FastLauncher's."""
    from numba.cuda.cudadrv import driver
    from numba.cuda.dispatcher import _Kernel
    from numba.cuda.typing.typeof import typeof
    core_stream = driver._to_core_stream(numba_stream(cupy))
    z = cupy.zeros
    cases = {"1-D": z(1024, np.float32), "1-D step 2": z(64, np.float32)[::2],
             "1-D reversed": z(8, np.float64)[::-1], "2-D C": z((4, 5), np.float32),
             "2-D F": z((4, 5), np.float64).T, "2-D A": z((6, 6), np.int32)[::2, 1:5],
             "(4, 1) column": z((4, 4), np.float32)[:, :1], "0-D": z((), np.int64),
             "size 0": z((0, 3), np.float32),
             "3-D transposed": z((2, 3, 4), np.uint8).transpose(1, 0, 2), "scalars": None}
    problems = []
    for name, x in cases.items():
        values = [x] if x is not None else [np.float32(0.5), 1.5, True, 7, np.uint64(3),
                                            np.int32(-2)]
        packed = launcher.pack(values)
        if packed is None:
            problems.append(f"{name}: not handled by FastLauncher")
            continue
        mine = launcher.numba_types(packed[0])
        k = _Kernel.__new__(_Kernel)
        k.extensions = []
        flat = []
        try:
            numbas = tuple(typeof(v) for v in values)
            for ty, v in zip(numbas, values):
                k._prepare_args(ty, v, core_stream, [], flat)
        except Exception as e:  # not FastLauncher's disagreement: say so, compare the rest
            print(f"note: numba itself fails on the {name} case: {e!r}")
            continue
        if mine != numbas:
            problems.append(f"{name}: types {mine} != numba's {numbas}")
            continue
        if comparable(packed[1]) != comparable(flat):
            problems.append(f"{name}: arguments {packed[1]} != numba's {flat}")
    return len(cases), problems


def check_results(cupy, launcher):
    """Fast and plain launches of three kernels give the same bits (and a fast launch ran)."""
    from gpudl.kernels import dropout as dk
    from gpudl.kernels import elementwise as ew
    from gpudl.kernels import matmul as mm
    rng = np.random.default_rng(1)
    f32 = lambda *s: cupy.asarray(rng.standard_normal(s, dtype=np.float32))  # noqa: E731
    a, b, x, y = f32(1000), f32(1000), f32(1000), f32(1000)
    p, q = f32(64, 48), f32(48, 40)
    mgrid, mblock = mm.launch_config(mm.MATMUL_DEFAULT, 64, 40)
    runs = [("multiply", dk.multiply, 4, THREADS, lambda: (a, b), (1000,)),
            ("axpby", ew.axpby, 4, THREADS,
             lambda: (np.float32(0.75), x, np.float32(-1.25), y), (1000,)),
            ("matmul 64x48x40", mm.KERNELS[mm.MATMUL_DEFAULT]["nn"], mgrid, mblock,
             lambda: (p, q), (64, 40))]
    problems = []
    for name, kernel, grid, block, inputs, shape in runs:
        stream = numba_stream(cupy)
        plain, fast = cupy.full(shape, np.nan, np.float32), cupy.full(shape, np.nan, np.float32)
        kernel[grid, block, stream](*inputs(), plain)
        launcher.launch(kernel, grid, block, stream, inputs() + (fast,))  # makes the entry
        fast[...] = np.nan
        before = launcher.fast_launches
        launcher.launch(kernel, grid, block, stream, inputs() + (fast,))
        if launcher.fast_launches != before + 1:
            problems.append(f"{name}: FastLauncher took the plain path")
        bits = [cupy.asnumpy(r).view(np.uint32) for r in (plain, fast)]
        if not np.array_equal(*bits):
            problems.append(f"{name}: fast result differs from the plain launch's")
    return [name for name, *_ in runs], problems


def time_launches(cupy, launch, n, repeat):
    """Median (host us, GPU us) per launch over repeat rounds of n launches."""
    stream = cupy.cuda.get_current_stream()
    for _ in range(10):
        launch()
    stream.synchronize()
    host, gpu = [], []
    for _ in range(repeat):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        t0 = time.perf_counter()
        for _ in range(n):
            launch()
        host.append((time.perf_counter() - t0) / n * 1e6)
        stop.record(stream)
        stop.synchronize()
        gpu.append(cupy.cuda.get_elapsed_time(start, stop) * 1e3 / n)
    return statistics.median(host), statistics.median(gpu)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=2000, help="launches per round")
    p.add_argument("--size", type=int, default=1024, help="elements per array")
    p.add_argument("--repeat", type=int, default=5, help="rounds; the median is reported")
    p.add_argument("--stream", choices=["current", "new"], default="current",
                   help="time on CuPy's current stream or on a new non-blocking one")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    why = no_gpu_reason()
    if why:
        print(f"launch_overhead needs a GPU (CuPy and a visible NVIDIA device): {why}; "
              "nothing measured")
        return 0

    import cupy
    from gpudl.backend import fastlaunch
    from gpudl.kernels import dropout as dk

    launcher = fastlaunch.FastLauncher()
    if not launcher.enabled:
        print(f"FastLauncher is unavailable: {launcher.why_not}")
        return 1
    n_cases, problems = check_types_and_args(cupy, launcher)
    kernels, more = check_results(cupy, launcher)
    with cupy.cuda.Stream(non_blocking=True):  # the external-stream path as well
        _, on_stream = check_results(cupy, launcher)
    problems += more + [f"on a created stream: {m}" for m in on_stream]
    if problems:
        print("FastLauncher disagrees with numba:\n  " + "\n  ".join(problems))
        return 1
    print(f"checks passed: types and flattened arguments of {n_cases} CuPy argument sets equal "
          f"numba's; {', '.join(kernels)} give the plain launch's bits (null and created stream)")

    stream_ctx = cupy.cuda.Stream(non_blocking=True) if args.stream == "new" else None
    if stream_ctx is not None:
        stream_ctx.use()
    n = args.size
    rng = np.random.default_rng(0)
    a = cupy.asarray(rng.standard_normal(n, dtype=np.float32))
    b = cupy.asarray(rng.standard_normal(n, dtype=np.float32))
    out = cupy.empty(n, np.float32)
    blocks = -(-n // THREADS)
    stream = numba_stream(cupy)
    kernel = dk.multiply
    raw = cupy.RawKernel(RAW_SOURCE, "gpudl_mul")
    elementwise = cupy.ElementwiseKernel("float32 a, float32 b", "float32 out", "out = a * b",
                                         "gpudl_mul_ew")
    n64 = np.int64(n)
    impls = [
        ("numba kernel[grid, block, stream](*args) (gpudl today)",
         lambda: kernel[blocks, THREADS, stream](a, b, out)),
        ("gpudl FastLauncher.launch", lambda: launcher.launch(kernel, blocks, THREADS, stream,
                                                              (a, b, out))),
        ("CuPy RawKernel", lambda: raw((blocks,), (THREADS,), (a, b, out, n64))),
        ("CuPy ElementwiseKernel", lambda: elementwise(a, b, out)),
    ]
    expect = cupy.asnumpy(a) * cupy.asnumpy(b)
    rows, results = [], {}
    for name, launch in impls:
        out[...] = np.nan
        plain_before = launcher.plain_launches
        host, gpu = time_launches(cupy, launch, args.n, args.repeat)
        cupy.cuda.get_current_stream().synchronize()
        if not np.array_equal(cupy.asnumpy(out).view(np.uint32), expect.view(np.uint32)):
            print(f"{name}: result differs from NumPy's a * b")
            return 1
        if "FastLauncher" in name and launcher.plain_launches != plain_before:
            print("FastLauncher fell back to the plain launch while timing")
            return 1
        results[name] = host
        rows.append([name, f"{host:.2f}", f"{gpu:.2f}"])
    base = results[impls[0][0]]
    for row in rows:
        row.append(f"{base / results[row[0]]:.1f}")
    fast = results[impls[1][0]]
    stream_name = "CuPy's current stream" if stream_ctx is None else "a new non-blocking stream"
    record(f"Kernel launch overhead: {args.n} back-to-back launches of out = a * b on {n} "
           f"float32, {stream_name}", gpu_name(),
           ["implementation", "host us / launch", "GPU us / launch", "numba plain / this"],
           rows, json_path=args.json,
           notes=(f"Host time: perf_counter around the {args.n} launches, before the sync; GPU "
                  "time: CUDA events around the same loop; where the two are close, the host is "
                  "the bottleneck. Median of "
                  f"{args.repeat} rounds. FastLauncher (gpudl/backend/fastlaunch.py, opt-in) "
                  f"{'meets' if fast <= 10 else 'misses'} the 10 us target at {fast:.2f} us; its "
                  "types, arguments and results were checked against numba's first."))
    if stream_ctx is not None:
        cupy.cuda.Stream.null.use()
    return 0


if __name__ == "__main__":
    sys.exit(main())
