"""The CUDA C++ kernels' sm_90 report, without a GPU: registers, stack and
spills from ptxas -v, dynamic shared memory from the launchers, and counts of
the SASS instructions that say the hardware paths are used (HMMA: tensor
cores, LDSM: ldmatrix, LDGSTS: cp.async, LDG.E.128: 128-bit global loads,
FFMA: FP32 multiply-adds).

    python -m benchmarks.cu_report [--md]

This is the evidence RESULTS.md records for kernels no GPU has yet run.
"""
from __future__ import annotations

import argparse
import re
import sys

COUNTED = ("HMMA", "LDSM", "LDGSTS", "LDG.E.128", "FFMA")


def _count(listing, what):
    if "." in what:  # a full opcode prefix, e.g. LDG.E.128 (also .CONSTANT forms)
        return len(re.findall(r"\s" + re.escape(what) + r"[.\s]", listing))
    return len(re.findall(r"\s" + what + r"[.\s]", listing))


def modules():
    """(module label, ptx, cubin, {kernel: dynamic smem bytes or None})."""
    from gpudl.kernels import conv_mma as cm
    from gpudl.kernels import cuda_cpp
    from gpudl.kernels import gemm_mma as gm
    from gpudl.kernels import sgemm as sg
    out = []
    smem = {gm.kernel_name(p, v, al): gm.smem_bytes(p, v)
            for p in gm.ELEM for v in gm.VARIANTS for al in (True, False)}
    out.append(("gemm_mma.cu", gm.compile("ptx"), gm.compile("cubin"), smem))
    for blocks, opts in sorted(sg.OPTIONS.items()):
        out.append((f"sgemm.cu ({blocks} block/SM)",
                    cuda_cpp.compile("sgemm", target="ptx", options=opts),
                    cuda_cpp.compile("sgemm", target="cubin", options=opts), {}))
    smem = {}
    for p in gm.ELEM:
        for op in cm.OPS:
            try:
                smem[cm.kernel_name(p, op)] = cm.smem_bytes(p, op)
            except Exception:  # noqa: BLE001 - a launcher that sizes per problem
                smem[cm.kernel_name(p, op)] = None
    out.append(("conv_mma.cu", cm.compile("ptx"), cm.compile("cubin"), smem))
    return out


def rows():
    from gpudl.kernels import cuda_cpp
    table = []
    for label, ptx, cubin, smem in modules():
        report = cuda_cpp.ptxas_report(ptx)
        listing = cuda_cpp.sass_by_kernel(cubin)
        for name in sorted(report):
            r = report[name]
            sass = listing.get(name, "")
            table.append({"module": label, "kernel": name, "registers": r["registers"],
                          "stack": r["stack"], "spills": r["spill_stores"] + r["spill_loads"],
                          "smem_static": r["smem"], "smem_dynamic": smem.get(name),
                          **{k: _count(sass, k) for k in COUNTED}})
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--md", action="store_true", help="a Markdown table")
    args = p.parse_args(argv)
    table = rows()
    head = ["module", "kernel", "registers", "stack", "spills", "smem_static", "smem_dynamic",
            *COUNTED]
    if args.md:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in table:
            print("| " + " | ".join("-" if r[h] is None else str(r[h]) for h in head) + " |")
    else:
        for r in table:
            print("  ".join(f"{r[h]}" for h in head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
