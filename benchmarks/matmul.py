"""Each matmul kernel version against cuBLAS (cupy.matmul), float32, on the GPU.

Every version is checked against cuBLAS on fresh random inputs before it is
timed; times are medians of CUDA-event intervals after a warm-up.
Usage: python -m benchmarks.matmul [--sizes 1024 2048 4096] [--versions naive tiled blocked]
"""
from __future__ import annotations

import argparse

from .common import gpu_name, record, time_cuda


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--versions", nargs="+", default=None)
    p.add_argument("--variants", nargs="+", default=["nn"], help="nn, nt, tn")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import cupy
    from numba import cuda

    from gpudl.kernels import matmul as mm

    versions = args.versions or list(mm.KERNELS)
    stream = cuda.external_stream(cupy.cuda.get_current_stream().ptr)

    def run(version, a, b, c, ta, tb):
        grid, block = mm.launch_config(version, c.shape[0], c.shape[1])
        variant = ("t" if ta else "n") + ("t" if tb else "n")
        mm.KERNELS[version][variant][grid, block, stream](a, b, c)
    rows = []
    for n in args.sizes:
        rng = cupy.random.default_rng(n)
        a = rng.standard_normal((n, n), dtype=cupy.float32)
        b = rng.standard_normal((n, n), dtype=cupy.float32)
        flops = 2.0 * n ** 3
        for variant in args.variants:
            ta, tb = variant[0] == "t", variant[1] == "t"
            opa, opb = (a.T if ta else a), (b.T if tb else b)
            ref = cupy.matmul(opa, opb)
            t_ref = time_cuda(lambda: cupy.matmul(opa, opb), repeat=args.repeat)
            rows.append([n, variant, "cuBLAS (cupy.matmul)", f"{t_ref * 1e3:.3f}",
                         f"{flops / t_ref / 1e12:.2f}", "1.00", "-"])
            for version in versions:
                c = cupy.full((n, n), cupy.nan, dtype=cupy.float32)  # poison
                run(version, a, b, c, ta, tb)
                err = float(cupy.linalg.norm(c - ref) / cupy.linalg.norm(ref))
                if not err < 1e-5:
                    raise AssertionError(f"matmul {version}/{variant} at {n}: rel. error {err}")
                reps = max(2, args.repeat // 4) if version == "naive" else args.repeat
                t = time_cuda(lambda: run(version, a, b, c, ta, tb),
                              repeat=reps)
                rows.append([n, variant, version + (" (default)" if version == mm.MATMUL_DEFAULT
                                                    else ""),
                             f"{t * 1e3:.3f}", f"{flops / t / 1e12:.2f}", f"{t_ref / t:.3f}",
                             f"{err:.1e}"])
    record("Matrix multiply kernels vs cuBLAS, float32 (TF32 off), square n x n x n",
           gpu_name(), ["n", "op", "version", "median ms", "TFLOP/s", "cuBLAS time / ours",
                        "rel. error"], rows,
           notes="A ratio of 1 would match cuBLAS; the FLOP count is 2 n^3.",
           json_path=args.json)


if __name__ == "__main__":
    main()
