"""Precision policy: which number format matrix products and convolutions read.

    gpudl.set_precision("bf16-mixed")   # or "fp32" (default), "tf32", "fp16-mixed"

Under a policy other than "fp32", the inputs of every float32 matmul and
convolution (forward, input gradient and weight gradient) are rounded to a
narrower format and the products are accumulated in float32, which is what
a tensor core does: TF32 keeps 10 mantissa bits, BF16 7 (float32's exponent
range), FP16 10 (with a 5-bit exponent: 65504 is its largest value, hence
loss scaling). Everything else stays float32: master weights and optimizer
state, activations between layers, softmax, losses, batch-norm statistics and
reductions. Layers in float64 (gradient checks) always compute in float64.

The CPU backend rounds in NumPy, so it is the reference for the GPU kernels
and a way to check a mixed-precision run without a GPU. Rounding is
round-to-nearest-even for BF16 and FP16 (cvt.rn on a GPU); TF32 rounds half
away from zero, as cvt.rna.tf32.f32 and cuBLAS do.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

#: policy name -> the format matmul/conv inputs are rounded to (None: float32 as is)
POLICIES = {"fp32": None, "tf32": "tf32", "bf16-mixed": "bf16", "fp16-mixed": "fp16"}
FORMATS = ("tf32", "bf16", "fp16")
#: mantissa bits kept (besides the implicit one) by each format
MANTISSA_BITS = {"fp32": 23, "tf32": 10, "bf16": 7, "fp16": 10}

_state = {"policy": "fp32"}


def check_policy(name, what="precision"):
    if not isinstance(name, str) or name not in POLICIES:
        raise ValueError(f"{what} must be one of {', '.join(repr(p) for p in POLICIES)}, "
                         f"got {name!r}")
    return name


def set_precision(name: str) -> str:
    """Set the process-wide policy; returns the previous one."""
    check_policy(name)
    old, _state["policy"] = _state["policy"], name
    return old


def get_precision() -> str:
    return _state["policy"]


@contextlib.contextmanager
def using(name: str):
    """``with gpudl.precision.using("bf16-mixed"): ...`` sets the policy for a block."""
    old = set_precision(name)
    try:
        yield name
    finally:
        _state["policy"] = old


def compute_format(dtype):
    """The format a matmul/conv over arrays of ``dtype`` rounds its inputs to
    under the current policy: None (no rounding) for anything but float32."""
    fmt = POLICIES[_state["policy"]]
    if fmt is None or np.dtype(dtype) != np.float32:
        return None
    return fmt


def needs_loss_scaling(policy=None) -> bool:
    return (policy or _state["policy"]) == "fp16-mixed"


def check_format(fmt, what="precision"):
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"{what}: format must be None or one of {FORMATS}, got {fmt!r}")
    return fmt


# ---- rounding (the CPU reference) ------------------------------------------
def round_to(x, fmt):
    """float32 array with each value of x rounded to fmt ("tf32", "bf16",
    "fp16"; None: x as float32). NaN stays NaN, overflow becomes inf."""
    check_format(fmt, "round_to")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if fmt is None:
        return x
    u = x.view(np.uint32)
    if fmt == "tf32":  # half away from zero at bit 13 (a carry never reaches the sign)
        r = u + np.uint32(0x1000)
        r &= np.uint32(0xFFFFE000)
    else:
        # nearest even at bit 16 (bf16) or 13 (fp16): add half less one plus the lowest kept bit
        shift = np.uint32(16 if fmt == "bf16" else 13)
        r = u >> shift
        r &= np.uint32(1)
        r += np.uint32((1 << (int(shift) - 1)) - 1)
        r += u
        r &= np.uint32(0xFFFFFFFF ^ ((1 << int(shift)) - 1))
    if fmt == "fp16":
        _fp16_range(x, r)
    nan = np.isnan(x)
    if nan.any():  # a NaN is quieted, not rounded (rounding could carry it into inf)
        keep = np.uint32({"bf16": 0xFFFF0000, "tf32": 0xFFFFE000, "fp16": 0xFFFFE000}[fmt])
        r = np.where(nan, (u | np.uint32(0x00400000)) & keep, r).astype(np.uint32)
    return r.view(np.float32)


def _fp16_range(x, r):
    """Fix up, in r, what FP16's 5-bit exponent changes: magnitudes that round
    past 65504 become inf, those below 2**-14 (FP16's subnormals and zero)
    round to multiples of 2**-24 (NumPy's float16 conversion, nearest even)."""
    mag = r & np.uint32(0x7FFFFFFF)
    over = (mag > np.uint32(0x477FE000)) & (mag <= np.uint32(0x7F800000))
    r[over] = (r[over] & np.uint32(0x80000000)) | np.uint32(0x7F800000)
    small = (x.view(np.uint32) & np.uint32(0x7FFFFFFF)) < np.uint32(0x38800000)
    if small.any():
        with np.errstate(over="ignore", under="ignore"):
            r[small] = x[small].astype(np.float16).astype(np.float32).view(np.uint32)


def to_bf16_bits(x):
    """uint16 BF16 bit patterns of x (round to nearest even): the storage a
    BF16 tensor-core kernel reads."""
    return (round_to(x, "bf16").view(np.uint32) >> np.uint32(16)).astype(np.uint16)


def from_bf16_bits(bits):
    return (np.asarray(bits, np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


# ---- dynamic loss scaling (fp16-mixed) ----------------------------------------
class LossScaler:
    """Dynamic loss scaling for FP16: the loss gradient is multiplied by
    ``scale`` so small gradients survive FP16's narrow range; the optimizer
    divides it out. A step whose gradients hold inf/NaN is skipped and the
    scale halved; after ``growth_interval`` clean steps in a row it doubles.
    The state is saved in checkpoints."""

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5,
                 growth_interval=2000, min_scale=1.0):
        for name, v in (("init_scale", init_scale), ("min_scale", min_scale)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"LossScaler: {name} must be a positive finite number, got {v!r}")
        if not (growth_factor > 1):
            raise ValueError(f"LossScaler: growth_factor must be > 1, got {growth_factor!r}")
        if not (0 < backoff_factor < 1):
            raise ValueError(f"LossScaler: backoff_factor must be in (0, 1), got {backoff_factor!r}")
        if not (isinstance(growth_interval, int) and growth_interval >= 1):
            raise ValueError(f"LossScaler: growth_interval must be an int >= 1, "
                             f"got {growth_interval!r}")
        self.scale = float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = growth_interval
        self.min_scale = float(min_scale)
        self.good_steps = 0
        self.skipped = 0

    def update(self, found_inf: bool) -> bool:
        """Record one step; True when its update should be applied."""
        if found_inf:
            self.scale = max(self.scale * self.backoff_factor, self.min_scale)
            self.good_steps = 0
            self.skipped += 1
            return False
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0
        return True

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped": self.skipped,
                "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "min_scale": self.min_scale}

    def load_state_dict(self, d: dict) -> None:
        self.scale = float(d["scale"])
        self.good_steps = int(d["good_steps"])
        self.skipped = int(d.get("skipped", 0))
        for k in ("growth_factor", "backoff_factor", "min_scale"):
            if k in d:
                setattr(self, k, float(d[k]))
        if "growth_interval" in d:
            self.growth_interval = int(d["growth_interval"])

    def __repr__(self):
        return (f"LossScaler(scale={self.scale:g}, good_steps={self.good_steps}, "
                f"growth_interval={self.growth_interval})")
