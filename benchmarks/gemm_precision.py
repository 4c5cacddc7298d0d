"""Tensor-core GEMM (kernels/cu/gemm_mma.cu) per precision against cuBLAS of
the same precision, square n x n x n, on the GPU.

For each size and precision the inputs are rounded to the format on the host
(gpudl.precision, the reference rounding), our kernel's result is checked
against an FP32 product of the same rounded inputs (cupy.matmul with TF32
off: the products are exact, so only the order of FP32 sums differs), then
our kernel and the baselines are timed with CUDA events after a warm-up
(medians). Baselines, all cuBLAS:
    tf32  torch.matmul on float32 with allow_tf32=True (TF32 tensor cores)
    bf16  torch.matmul on bfloat16 (FP32 accumulate, BF16 output)
    fp16  torch.matmul on float16 (FP32 accumulate, FP16 output); cupy.matmul too
and, for scale, FP32 cuBLAS with TF32 off (cupy.matmul). cuBLAS writes a
16-bit C for 16-bit inputs, ours writes float32: at these sizes the products
dominate (2 n^3 flops against 4-6 n^2 bytes), so the times still compare.

Usage: python -m benchmarks.gemm_precision [--sizes 1024 2048 4096 8192]
       [--precisions tf32 bf16 fp16] [--variants nn nt] [--repeat 10] [--json PATH]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from .common import gpu_name, record, time_cuda


def _gpu_or_exit():
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception as e:  # no CuPy, no driver, no device
        why = f"{type(e).__name__}: {e}"
    else:
        why = "no CUDA device visible"
    print(f"gemm_precision needs an NVIDIA GPU with CuPy ({why}); nothing was measured.",
          file=sys.stderr)
    sys.exit(2)


def _torch():
    try:
        import torch
        return torch if torch.cuda.is_available() else None
    except ImportError:
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--precisions", nargs="+", default=["tf32", "bf16", "fp16"])
    p.add_argument("--variants", nargs="+", default=["nn"], help="nn, nt, tn, tt")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    cupy = _gpu_or_exit()
    torch = _torch()

    from gpudl.kernels import gemm_mma as gm
    from gpudl.precision import round_to, to_bf16_bits

    rows = []
    for n in args.sizes:
        rng = np.random.default_rng(n)
        host_a = rng.standard_normal((n, n), dtype=np.float32)
        host_b = rng.standard_normal((n, n), dtype=np.float32)
        flops = 2.0 * n ** 3
        tflops = lambda t: f"{flops / t / 1e12:.1f}"  # noqa: E731
        for prec in args.precisions:
            ra, rb = round_to(host_a, prec), round_to(host_b, prec)
            da, db = cupy.asarray(ra), cupy.asarray(rb)  # rounded float32
            if prec == "bf16":
                sa, sb = cupy.asarray(to_bf16_bits(ra)), cupy.asarray(to_bf16_bits(rb))
            else:
                sa, sb = da.astype(gm.STORAGE[prec]), db.astype(gm.STORAGE[prec])
            for variant in args.variants:
                ta, tb = gm.VARIANTS[variant]
                # the stored arrays are (n, n) either way: op() only changes which axis is k
                opa, opb = (da.T if ta else da), (db.T if tb else db)
                ref = cupy.matmul(opa, opb)  # FP32 SIMT cuBLAS (CuPy leaves TF32 off by default)
                c = cupy.full((n, n), cupy.nan, dtype=cupy.float32)
                gm.launch(sa, sb, c, ta, tb, prec)
                err = float(cupy.linalg.norm(c - ref) / cupy.linalg.norm(ref))
                if not err < 1e-4:
                    raise AssertionError(f"gemm_mma {prec} {variant} at {n}: rel. error {err:.2e}")
                t_ours = time_cuda(lambda: gm.launch(sa, sb, c, ta, tb, prec), repeat=args.repeat)
                t_fp32 = time_cuda(lambda: cupy.matmul(opa, opb), repeat=args.repeat)
                base = []
                if torch is not None:
                    dt = {"tf32": torch.float32, "bf16": torch.bfloat16,
                          "fp16": torch.float16}[prec]
                    # built from the rounded float32 values, so the conversion is exact
                    xa = torch.as_tensor(da, device="cuda").to(dt)
                    xb = torch.as_tensor(db, device="cuda").to(dt)
                    xa, xb = (xa.T if ta else xa), (xb.T if tb else xb)
                    old = torch.backends.cuda.matmul.allow_tf32
                    torch.backends.cuda.matmul.allow_tf32 = prec == "tf32"
                    try:
                        base.append((f"torch.matmul {prec}", time_cuda(lambda: torch.matmul(xa, xb),
                                                                        repeat=args.repeat)))
                    finally:
                        torch.backends.cuda.matmul.allow_tf32 = old
                if prec == "fp16":
                    ha, hb = (sa.T if ta else sa), (sb.T if tb else sb)
                    base.append(("cupy.matmul fp16", time_cuda(lambda: cupy.matmul(ha, hb),
                                                               repeat=args.repeat)))
                best = min((t for _, t in base), default=None)
                rows.append([n, prec, variant, f"{t_ours * 1e3:.3f}", tflops(t_ours),
                             ", ".join(f"{name} {t * 1e3:.3f} ms ({tflops(t)})" for name, t in base)
                             or "- (no torch)",
                             f"{best / t_ours:.2f}" if best else "-",
                             f"{t_fp32 * 1e3:.3f} ({tflops(t_fp32)})", f"{err:.1e}"])
    record("Tensor-core GEMM (gemm_mma.cu) vs cuBLAS of the same precision, square n x n x n",
           gpu_name(), ["n", "prec", "op", "ours ms", "ours TFLOP/s",
                        "cuBLAS same precision ms (TFLOP/s)", "best cuBLAS time / ours",
                        "FP32 cuBLAS ms (TFLOP/s)", "rel. error vs FP32"],
           rows, notes="A ratio of 1 would match cuBLAS; FLOP count 2 n^3. Our C is float32; "
                       "torch's 16-bit products write a 16-bit C.",
           json_path=args.json)


if __name__ == "__main__":
    main()
