"""The CUDA C++ SGEMM (kernels/cu/sgemm.cu) against cuBLAS, float32, on a GPU.

Two ways in:
  * the gemm group of ``python -m benchmarks`` (run by benchmarks/gpu_check.sh)
    adds ``sweep_impls`` to its kernel-version sweep, next to the numba
    versions (naive ... warp): both shapes of the kernel, nn, n x n x n;
  * ``python -m benchmarks.sgemm_cpp`` times all four variants, each
    checked against cuBLAS first (relative Frobenius error < 1e-5).
The two shapes (NVRTC define SGEMM_BLOCKS_PER_SM, see sgemm.cu): "sgemm.cu"
two blocks per SM at <= 128 registers, "sgemm.cu-1blk" one block per SM with
the k-loop fully unrolled. Which is faster is what the GPU run is for.
Usage: python -m benchmarks.sgemm_cpp [--sizes 1024 2048 4096] [--variants nn nt tn tt]
"""
from __future__ import annotations

import argparse

from .common import gpu_name, record, time_cuda

VERSIONS = {"sgemm.cu": 2, "sgemm.cu-1blk": 1}  # version label -> blocks per SM


def sweep_impls(impl_cls, a, b, ref, rel_err):
    """One ``impl_cls`` (benchmarks.run.Impl) per shape of the kernel for
    C = a @ b, CuPy float32; none is a default. NVRTC compiles on the first
    check, so a compile failure is that entry's error, not the run's."""
    import cupy
    from gpudl.kernels import sgemm as sg
    out = []
    for version, blocks in VERSIONS.items():
        c = cupy.empty((a.shape[0], b.shape[1]), cupy.float32)

        def fn(c=c, blocks=blocks):
            sg.sgemm(a, b, c, blocks_per_sm=blocks)

        def check(fn=fn, c=c):
            c.fill(cupy.nan)  # poison: every element must be written
            fn()
            return rel_err(c, ref)
        out.append(impl_cls(version, fn, check, default=False, version=version))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--variants", nargs="+", default=["nn", "nt", "tn", "tt"])
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import cupy

    from gpudl.kernels import sgemm as sg
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
            for version, blocks in VERSIONS.items():
                c = cupy.full((n, n), cupy.nan, dtype=cupy.float32)

                def run(c=c, blocks=blocks):
                    sg.sgemm(a, b, c, ta, tb, blocks_per_sm=blocks)
                run()
                err = float(cupy.linalg.norm(c - ref) / cupy.linalg.norm(ref))
                if not err < 1e-5:
                    raise AssertionError(f"{version}/{variant} at {n}: rel. error {err}")
                t = time_cuda(run, repeat=args.repeat)
                rows.append([n, variant, version, f"{t * 1e3:.3f}", f"{flops / t / 1e12:.2f}",
                             f"{t_ref / t:.3f}", f"{err:.1e}"])
    record("CUDA C++ SGEMM (kernels/cu/sgemm.cu) vs cuBLAS, float32 (TF32 off), n x n x n",
           gpu_name(), ["n", "op", "version", "median ms", "TFLOP/s", "cuBLAS time / ours",
                        "rel. error vs cuBLAS"], rows,
           notes="A ratio of 1 would match cuBLAS; the FLOP count is 2 n^3.",
           json_path=args.json)


if __name__ == "__main__":
    main()
