"""Every kernel with the signatures it is compiled for, and an sm_90 report.

`python -m gpudl.kernels.catalog` (or `make kernels-report`) compiles each
kernel to PTX for Hopper with numba, assembles it with `ptxas -v` and prints
registers, shared memory, spills and stack frame per kernel. No GPU is
needed: only numba-cuda's NVVM and the ptxas that numba-cuda[cu12] installs.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from numba import boolean, float32, float64, int64, uint32, uint64

from . import batchnorm as bn
from . import augment, dropout
from . import elementwise as ew
from . import (concat, conv, conv_implicit, loss, matmul, optim, pool, reduce, rounding, softmax,
               steps)

FLOATS = (float32, float64)


def _sigs(make, dtypes=FLOATS):
    return [make(t) for t in dtypes]


def _v(t):  # 1-D C-contiguous
    return t[::1]


def _m(t):  # 2-D C-contiguous
    return t[:, ::1]


def _t3(t):  # 3-D C-contiguous
    return t[:, :, ::1]


def _t4(t):  # 4-D C-contiguous
    return t[:, :, :, ::1]


_GEO = (int64,) * 6  # sh, sw, dh, dw, top, left
_POOL = (int64,) * 6  # kh, kw, sh, sw, top, left


KERNELS = []
for _version, _variants in matmul.KERNELS.items():
    for _variant, _kernel in _variants.items():
        KERNELS.append((f"matmul_{_version}_{_variant}", _kernel,
                        _sigs(lambda t: (_m(t), _m(t), _m(t)))))
KERNELS += [
    ("add_bias", ew.add_bias, _sigs(lambda t: (_v(t), _v(t)))),
    ("axpby", ew.axpby, _sigs(lambda t: (t, _v(t), t, _v(t), _v(t)))),
    ("relu", ew.relu, _sigs(lambda t: (_v(t), _v(t)))),
    ("relu_backward", ew.relu_backward, _sigs(lambda t: (_v(t), _v(t), _v(t)))),
    ("sigmoid", ew.sigmoid, _sigs(lambda t: (_v(t), _v(t)))),
    ("sigmoid_backward", ew.sigmoid_backward, _sigs(lambda t: (_v(t), _v(t), _v(t)))),
    ("tanh", ew.tanh, _sigs(lambda t: (_v(t), _v(t)))),
    ("tanh_backward", ew.tanh_backward, _sigs(lambda t: (_v(t), _v(t), _v(t)))),
    ("step", ew.step, _sigs(lambda t: (_v(t), _v(t)))),
    ("take_rows", ew.take_rows,
     _sigs(lambda t: (_m(t), _v(int64), _m(t)), (float32, float64, int64))),
    ("sum_rows_partial", reduce.sum_rows_partial, _sigs(lambda t: (_m(t), _m(t)))),
    ("sum_rows_naive", reduce.sum_rows_naive, _sigs(lambda t: (_m(t), _v(t)))),
    ("sum_1d", reduce.sum_1d, _sigs(lambda t: (_v(t), _v(t)))),
    ("argmax_rows", reduce.argmax_rows, _sigs(lambda t: (_m(t), _v(int64)))),
    ("softmax", softmax.softmax, _sigs(lambda t: (_m(t), _m(t)))),
    ("softmax_backward", softmax.softmax_backward, _sigs(lambda t: (_m(t), _m(t), _m(t)))),
    ("softmax_cross_entropy", loss.softmax_cross_entropy,
     _sigs(lambda t: (_m(t), _v(int64), _v(t), _m(t)))),
    ("mse", loss.mse, _sigs(lambda t: (_v(t), _v(t), _v(t), _v(t), t))),
    ("binary_cross_entropy", loss.binary_cross_entropy,
     _sigs(lambda t: (_v(t), _v(t), _v(t), _v(t), t, t, t))),
    ("binary_cross_entropy_logits", loss.binary_cross_entropy_logits,
     _sigs(lambda t: (_v(t), _v(t), _v(t), _v(t), t))),
    ("add_channel_bias", ew.add_channel_bias, _sigs(lambda t: (_v(t), _v(t), int64))),
    ("sum_channels_partial", reduce.sum_channels_partial, _sigs(lambda t: (_t3(t), _m(t)))),
    ("conv2d_direct_fwd", conv.conv2d_direct_fwd, _sigs(lambda t: (_t4(t),) * 3 + _GEO)),
    ("conv2d_direct_bwd_input", conv.conv2d_direct_bwd_input,
     _sigs(lambda t: (_t4(t),) * 3 + _GEO)),
    ("conv2d_direct_bwd_weight", conv.conv2d_direct_bwd_weight,
     _sigs(lambda t: (_t4(t), _t4(t), _m(t), int64, int64) + _GEO)),
    ("im2col", conv.im2col, _sigs(lambda t: (_t4(t), _t3(t)) + (int64,) * 4 + _GEO)),
    ("col2im", conv.col2im, _sigs(lambda t: (_t3(t), _t4(t)) + (int64,) * 4 + _GEO)),
    ("swap_axes01", conv.swap_axes01, _sigs(lambda t: (_t3(t), _t3(t)))),
    ("conv2d_implicit_fwd", conv_implicit.conv2d_implicit_fwd,
     _sigs(lambda t: (_t4(t),) * 3 + _GEO)),
    ("conv2d_implicit_bwd_input", conv_implicit.conv2d_implicit_bwd_input,
     _sigs(lambda t: (_t4(t),) * 3 + _GEO)),
    ("conv2d_implicit_bwd_weight", conv_implicit.conv2d_implicit_bwd_weight,
     _sigs(lambda t: (_t4(t), _t4(t), _t3(t), int64, int64) + _GEO)),
    ("max_pool2d_fwd", pool.max_pool2d_fwd,
     _sigs(lambda t: (_t4(t), _t4(t), _t4(int64)) + _POOL)),
    ("max_pool2d_bwd", pool.max_pool2d_bwd,
     _sigs(lambda t: (_t4(t), _t4(int64), _t4(t)) + _POOL)),
    ("avg_pool2d_fwd", pool.avg_pool2d_fwd, _sigs(lambda t: (_t4(t), _t4(t)) + _POOL)),
    ("avg_pool2d_bwd", pool.avg_pool2d_bwd, _sigs(lambda t: (_t4(t), _t4(t)) + _POOL)),
    ("sgd", optim.sgd, _sigs(lambda t: (_v(t),) * 4)),
    ("sgd_momentum", optim.sgd_momentum, _sigs(lambda t: (_v(t),) * 5 + (boolean,))),
    ("adam", optim.adam, _sigs(lambda t: (_v(t),) * 6)),
    ("rmsprop", optim.rmsprop, _sigs(lambda t: (_v(t),) * 5)),
    ("rmsprop_momentum", optim.rmsprop_momentum, _sigs(lambda t: (_v(t),) * 6)),
    ("adagrad", optim.adagrad, _sigs(lambda t: (_v(t),) * 5)),
    ("sum_squares", optim.sum_squares, _sigs(lambda t: (_v(t), _v(t)))),
    ("clip_factor", optim.clip_factor, [(_v(float64), float64, _v(float64))]),
    ("store_f64", optim.store_f64, _sigs(lambda t: (_v(t), _v(float64), int64))),
    ("narrow_from_f64", optim.narrow_from_f64, _sigs(lambda t: (_v(float64), int64, _v(t)))),
    ("take_rows_at", steps.take_rows_at,
     _sigs(lambda t: (_m(t), _v(int64), _v(int64), _m(t)), (float32, float64, int64))),
    ("metric_add", steps.metric_add,
     _sigs(lambda t: (_v(float64), int64, _v(t), float64, int64))),
    ("correct_argmax", steps.correct_argmax,
     _sigs(lambda t: (_m(t), _v(int64), _v(float64)))),
    ("correct_threshold", steps.correct_threshold,
     _sigs(lambda t: (_v(t), _v(t), t, _v(float64)))),
]
KERNELS += [
    ("bn_sqdev_partial", bn.sqdev_partial, _sigs(lambda t: (_t3(t), _v(t), _m(t)))),
    ("bn_backward_partial", bn.backward_partial,
     _sigs(lambda t: (_t3(t), _t3(t), _v(t), _m(t), _m(t)))),
    ("bn_channel_mean", bn.channel_mean, _sigs(lambda t: (_m(t), t, _v(t)))),
    ("bn_backward_finish", bn.backward_finish, _sigs(lambda t: (_m(t), _m(t)) + (_v(t),) * 3)),
    ("bn_channel_invstd", bn.channel_invstd, _sigs(lambda t: (_v(t), t, _v(t)))),
    ("bn_forward_apply", bn.forward_apply, _sigs(lambda t: (_v(t),) * 5 + (int64, _v(t)))),
    ("bn_backward_apply", bn.backward_apply,
     _sigs(lambda t: (_v(t),) * 7 + (t, int64, _v(t)))),
    ("dropout_mask", dropout.dropout_mask, _sigs(lambda t: (_v(t), _v(uint64), t))),
    ("multiply", dropout.multiply, _sigs(lambda t: (_v(t), _v(t), _v(t)))),
    ("concat_channels", concat.concat_channels, _sigs(lambda t: (_m(t), _m(t), int64))),
    ("split_channels", concat.split_channels, _sigs(lambda t: (_m(t), _m(t), int64))),
    ("affine_sample", augment.affine_sample,
     _sigs(lambda t: (_t4(t), _m(t), _t4(t), t, boolean))),
    ("round_bf16", rounding.round_bf16, [(_v(uint32), _v(uint32))]),
    ("round_tf32", rounding.round_tf32, [(_v(uint32), _v(uint32))]),
    ("round_fp16", rounding.round_fp16, [(_v(float32), _v(float32))]),
]


#: kernels whose float32 signature does float64 work on purpose: the epoch's
#: metrics are float64 sums, and clipping's factor is formed in float64 as
#: torch.nn.utils.clip_grad_norm_ forms it, then rounded once to the params' type
F64_BY_DESIGN = frozenset({"store_f64", "narrow_from_f64", "metric_add", "correct_argmax",
                           "correct_threshold"})


def _sig_name(sig):
    return str(sig[0].dtype) if hasattr(sig[0], "dtype") else str(sig[0])


def entries():
    """("name[dtype]", kernel, signature) for every kernel and signature."""
    return [(f"{name}[{_sig_name(sig)}]", kernel, sig)
            for name, kernel, sigs in KERNELS for sig in sigs]


def compile_all(cc=(9, 0)):
    """{"name[dtype]": PTX text} for every kernel and signature."""
    from numba import cuda
    if getattr(cuda, "compile_ptx", None) is None:
        raise RuntimeError("numba.cuda.compile_ptx is unavailable (is NUMBA_ENABLE_CUDASIM set?)")
    return {key: cuda.compile_ptx(kernel.py_func, sig, cc=cc)[0]
            for key, kernel, sig in entries()}


def find_ptxas():
    """ptxas from the nvidia-cuda-nvcc wheel (numba-cuda[cu12]), else PATH."""
    try:
        import nvidia.cuda_nvcc as nvcc
        for base in list(nvcc.__path__):
            path = os.path.join(base, "bin", "ptxas")
            if os.path.exists(path):
                return path
    except ImportError:
        pass
    path = shutil.which("ptxas")
    if path is None:
        raise FileNotFoundError("ptxas not found: install numba-cuda[cu12] or put CUDA's bin on PATH")
    return path


# An f64 instruction in a float32 kernel means a literal or scalar argument
# was typed float64 and dragged the arithmetic to double precision.
_F64 = re.compile(r"^\s*(?:@%p\d+\s+)?[a-z]+(?:\.[a-z0-9]+)*\.f64\b", re.M)


def _parse(text):
    def total(pattern):
        return sum(int(x) for x in re.findall(pattern, text))
    regs = [int(x) for x in re.findall(r"Used (\d+) registers", text)]
    return {
        "registers": max(regs) if regs else 0,
        "smem": total(r"(\d+) bytes smem"),
        "stack": total(r"(\d+) bytes stack frame"),
        "spill_stores": total(r"(\d+) bytes spill stores"),
        "spill_loads": total(r"(\d+) bytes spill loads"),
    }


def _ptxas_one(ptxas, arch, name, ptx):
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([ptxas, f"-arch={arch}", "-v", src, "-o", os.path.join(tmp, "k.cubin")],
                              capture_output=True, text=True)
    row = {"name": name, "ok": proc.returncode == 0, "log": proc.stdout + proc.stderr}
    row.update(_parse(row["log"]))
    row["f64_ops"] = len(_F64.findall(ptx))
    return row


def ptxas_report(ptx_by_name, arch="sm_90"):
    """Run ptxas -v on each PTX; one dict per kernel with registers, smem
    (bytes), stack (bytes of local-memory frame), spill_stores/spill_loads
    (bytes), f64_ops (f64 instructions in the PTX), ok and the raw log."""
    ptxas = find_ptxas()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(lambda kv: _ptxas_one(ptxas, arch, *kv), ptx_by_name.items()))


def format_report(rows):
    head = f"{'kernel':44} {'regs':>5} {'smem':>6} {'stack':>6} {'spill st/ld':>12} {'f64':>4}  ptxas"
    lines = [head, "-" * len(head)]
    for r in rows:
        spill = f"{r['spill_stores']}/{r['spill_loads']}"
        lines.append(f"{r['name']:44} {r['registers']:>5} {r['smem']:>6} {r['stack']:>6} "
                     f"{spill:>12} {r['f64_ops']:>4}  {'ok' if r['ok'] else 'FAILED'}")
    return "\n".join(lines)


def main():
    rows = ptxas_report(compile_all())
    print(format_report(rows))
    bad = [r["name"] for r in rows if not r["ok"] or r["stack"] or r["spill_stores"] or r["spill_loads"]]
    if bad:
        print("kernels failing ptxas or using local memory: " + ", ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
