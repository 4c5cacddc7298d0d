"""gpudl.profile: time every backend op and kernel launch, and place each on a roofline.

    with gpudl.profile() as prof:
        trainer.fit(x, y, epochs=1)
    prof.table()                         # sorted by total time; ops, then kernels
    prof.export_chrome_trace("t.json")   # chrome://tracing, ui.perfetto.dev

While active, the profiler replaces the op methods (every abstract method of
Backend) and ``launch`` of the backend INSTANCES in use with timing wrappers:
the current backend, the backends of the models, trainers or backends passed
in, every backend instance alive (``all_backends=True``), and any backend
created inside the block. On exit the instance attributes are deleted again,
so the methods are the class's functions and an op pays nothing when no
profiler is active. An op called inside another op (a CUDA op reading a
result back with to_numpy) counts as part of the outer op.

Timing: on a GPU (CuPy arrays) two CUDA events on the current stream around
each op and each kernel launch, read only when the results are asked for
(one wait then, none in the hot path); on the CPU and under numba's CUDA
simulator, time.perf_counter_ns (monotonic). Each record says which in
``timer``: "cuda-event" or "monotonic". NVTX ranges are pushed around ops
when cupy.cuda.nvtx or the nvtx package works, so Nsight Systems shows them.

Cost when active, on the CPU backend (min of 30 x 2000 calls): a 4-element
relu took 0.51 us before, 1.7 us inside and 0.52 us after the profiler; a
matmul with a keyword argument 2.8 us more; on a GPU add two CUDA events per
op and per launch. When inactive: nothing; the methods are the originals.
Single-threaded: one op stack is shared by every wrapped backend.

FLOPs and bytes come from gpudl.opcost. Each row gives GFLOP/s, GB/s, the
bound (memory when FLOPs per byte fall below the ridge point peak FLOP/s
over peak bytes/s, else compute), and the binding rate as a percentage of
the device's datasheet peak (H100, H200; unknown on the CPU) and of a ceiling
measured once per device and cached in $GPUDL_CACHE/ceilings.json or
~/.cache/gpudl/ceilings.json: a large copy and a large float32 matmul
(cupy on a GPU, NumPy on the CPU and under the simulator).
"""
from __future__ import annotations

import gc
import json
import statistics
import sys
import time

import numpy as np

from . import backend as _backends
from .backend.base import Backend
from .precision import get_precision
from .opcost import (A, TENSOR_PEAKS, device_peak, kernel_cost, measure_ceilings,  # noqa: F401
                     op_cost, rates, roofline)

OPS = tuple(sorted(Backend.__abstractmethods__))
_MISSING = object()
_SCALARS = (int, float, bool, str, type(None), np.generic, np.dtype, type)


def _one(v, _nd=np.ndarray, _new=tuple.__new__):
    """An argument as the profiler keeps it: arrays as A(shape, itemsize), no data."""
    if type(v) is _nd or (hasattr(v, "shape") and hasattr(v, "dtype")
                          and not isinstance(v, (np.generic, type))):
        return _new(A, (tuple(v.shape), v.dtype.itemsize))
    if isinstance(v, (list, tuple)):   # lists of arrays; short lists of numbers
        return tuple(map(_one, v)) if len(v) <= 64 or hasattr(v[0], "shape") else None
    return v if isinstance(v, _SCALARS) else None


def _shapes(sig):
    out = []
    for v in sig:
        if isinstance(v, A):
            out.append(v.shape)
        elif isinstance(v, tuple) and v and all(isinstance(e, A) for e in v):
            out.append([e.shape for e in v])
    return tuple(out)


def _fmt_shapes(shapes):
    def one(s):
        return "[" + " ".join(map(one, s)) + "]" if isinstance(s, list) else \
            "(" + ",".join(map(str, s)) + ")"
    return " ".join(map(one, shapes))


class Record:
    """One op call (kind "op") or kernel launch (kind "kernel")."""
    __slots__ = ("kind", "name", "device", "timer", "args", "kwargs", "parent", "launches",
                 "t0", "t1", "ev0", "ev1", "ref", "_cost", "_dur", "tc")

    def __init__(self, kind, name, device, timer, args, kwargs, parent):
        self.kind, self.name, self.device, self.timer = kind, name, device, timer
        self.args, self.kwargs, self.parent = args, kwargs, parent
        self.launches, self.ev0, self.ev1, self.ref, self._cost = 0, None, None, None, None
        self._dur = None
        self.tc = False  # the op launched tensor-core kernels

    @property
    def precision(self):
        """The input format of a reduced-precision matmul/conv op, else None."""
        return (self.kwargs or {}).get("precision")

    @property
    def shapes(self):
        """Shapes of the array arguments, in order (a list for a list of arrays)."""
        return _shapes(self.args)

    @property
    def duration_s(self):
        if self._dur is None:
            if self.ev0 is not None:  # the first read waits for the op; later ones are free
                import cupy
                self.ev1.synchronize()
                self._dur = cupy.cuda.get_elapsed_time(self.ev0, self.ev1) / 1e3
            else:
                self._dur = (self.t1 - self.t0) / 1e9
        return self._dur

    @property
    def start_s(self):
        """Start, seconds after the profiler was entered (GPU: on the stream's clock)."""
        if self.ev0 is not None:
            import cupy
            self.ev0.synchronize()
            return cupy.cuda.get_elapsed_time(self.ref[1], self.ev0) / 1e3
        return (self.t0 - self.ref[0]) / 1e9

    def _costs(self):
        if self._cost is None:
            try:
                self._cost = (op_cost(self.name, self.args, self.kwargs) if self.kind == "op"
                              else kernel_cost(self.name, self.args))
            except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError):
                self._cost = (0, 0)  # an op called with arguments the model cannot read
        return self._cost

    @property
    def flops(self):
        return self._costs()[0]

    @property
    def bytes(self):
        return self._costs()[1]

    def __repr__(self):
        return (f"Record({self.kind} {self.name} {_fmt_shapes(self.shapes)} on {self.device}, "
                f"{self.duration_s * 1e6:.1f} us, {self.timer})")


def _nvtx():
    """(push, pop) for NVTX ranges, or None when NVTX is unavailable."""
    try:
        from cupy.cuda import nvtx as cn
        cn.RangePush("gpudl.profile")
        cn.RangePop()
        return cn.RangePush, cn.RangePop
    except Exception:
        pass
    try:
        import nvtx
        nvtx.push_range("gpudl.profile")
        nvtx.pop_range()
        return nvtx.push_range, nvtx.pop_range
    except Exception:
        return None


def _backends_of(obj, out):
    if isinstance(obj, Backend):
        out.append(obj)
    elif hasattr(obj, "walk"):                  # a Sequential: every layer's backend
        out.extend(getattr(layer, "backend", None) for layer in obj.walk())
    elif hasattr(obj, "model"):                 # a Trainer
        _backends_of(obj.model, out)
        _backends_of(getattr(obj, "loss", None), out)
    elif isinstance(getattr(obj, "backend", None), Backend):
        out.append(obj.backend)


class profile:
    """Context manager recording every backend op and kernel launch; see the module doc.

    ``targets``: models, trainers, layers or backends whose backends to wrap (the
    current backend always is). ``all_backends``: also every backend instance alive.
    ``nvtx``: NVTX ranges around ops when available."""

    def __init__(self, *targets, all_backends=True, nvtx=True):
        self.targets, self.all_backends, self.use_nvtx = targets, all_backends, nvtx
        self.records: list[Record] = []
        self.devices: dict = {}     # backend name -> device name
        self._stack: list = []
        self._wrapped: list = []    # (backend, attribute, saved instance attribute)
        self._active = False

    # ---- entering and leaving -----------------------------------------------
    def __enter__(self):
        if self._active:
            raise RuntimeError("this gpudl.profile is already active")
        self._active = True
        self._nvtx = _nvtx() if self.use_nvtx else None
        self._make, self._hook = _backends._make, self._make_wrapped
        try:
            found = [_backends.get_backend()]
            for t in self.targets:
                _backends_of(t, found)
            if self.all_backends:
                found += [o for o in gc.get_objects() if isinstance(o, Backend)]
            seen = set()
            for be in found:
                if be is not None and id(be) not in seen:
                    seen.add(id(be))
                    self._wrap(be)
            _backends._make = self._hook
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        if _backends._make is self._hook:
            _backends._make = self._make
        for be, attr, saved in reversed(self._wrapped):
            if saved is _MISSING:
                be.__dict__.pop(attr, None)
            else:
                be.__dict__[attr] = saved
        self._wrapped.clear()
        self._active = False
        return False

    def _make_wrapped(self, device):
        be = self._make(device)
        if self._active:
            self._wrap(be)
        return be

    def _wrap(self, be):
        names = _matmul_names() if callable(getattr(be, "launch", None)) else None
        cp = getattr(be, "_cp", None)
        timer = "cuda-event" if cp is not None else "monotonic"
        ref = (time.perf_counter_ns(), None)
        if cp is not None:
            ev = cp.cuda.Event()
            ev.record()
            ref = (ref[0], ev)
        self.devices.setdefault(be.name, be.device_name())
        for attr in OPS:
            self._set(be, attr, self._op_wrapper(be, attr, timer, ref, cp))
        if names is not None:   # the kernels were imported above, not in the first timed op
            self._set(be, "launch", self._launch_wrapper(be, timer, ref, cp, names))

    def _set(self, be, attr, fn):
        self._wrapped.append((be, attr, be.__dict__.get(attr, _MISSING)))
        setattr(be, attr, fn)

    # ---- the hot path: keep these two short ------------------------------------
    def _op_wrapper(self, be, name, timer, ref, cp):
        fn, stack, records, device = getattr(be, name), self._stack, self.records, be.name
        now, Event = time.perf_counter_ns, (cp.cuda.Event if cp is not None else None)
        push, pop = self._nvtx or (None, None)

        def op(*args, **kwargs):
            if stack:                      # inside another op: part of that op
                return fn(*args, **kwargs)
            rec = Record("op", name, device, timer, tuple(map(_one, args)),
                         {k: _one(v) for k, v in kwargs.items()} if kwargs else None, None)
            rec.ref = ref
            stack.append(rec)
            records.append(rec)            # in start order, before its kernels
            if push is not None:
                push(name)
            try:
                if Event is not None:
                    rec.ev0 = Event()
                    rec.ev0.record()
                tc0 = getattr(be, "tensor_core_launches", 0)
                rec.t0 = now()
                out = fn(*args, **kwargs)
                rec.t1 = now()
                rec.tc = getattr(be, "tensor_core_launches", 0) != tc0
                if Event is not None:
                    rec.ev1 = Event()
                    rec.ev1.record()
            except BaseException:
                records.remove(rec)        # a failed op is not recorded
                raise
            finally:
                stack.pop()
                if pop is not None:
                    pop()
            return out
        op.__wrapped__ = fn
        return op

    def _launch_wrapper(self, be, timer, ref, cp, names):
        fn, stack, records, device = be.launch, self._stack, self.records, be.name
        now, Event = time.perf_counter_ns, (cp.cuda.Event if cp is not None else None)

        def launch(kernel, grid, block, *args):
            name = names.get(id(kernel))
            if name is None:
                name = names[id(kernel)] = _kernel_name(kernel)
            parent = stack[-1] if stack else None
            rec = Record("kernel", name, device, timer, tuple(map(_one, args)), None,
                         parent.name if parent is not None else None)
            if parent is not None:
                parent.launches += 1
            if Event is not None:
                rec.ev0 = Event()
                rec.ev0.record()
            rec.t0 = now()
            fn(kernel, grid, block, *args)
            rec.t1 = now()
            if Event is not None:
                rec.ev1 = Event()
                rec.ev1.record()
            rec.ref = ref
            records.append(rec)
        launch.__wrapped__ = fn
        return launch

    # ---- results ---------------------------------------------------------------
    @property
    def ops(self):
        return [r for r in self.records if r.kind == "op"]

    @property
    def kernels(self):
        return [r for r in self.records if r.kind == "kernel"]

    def summary(self, kind="op", ceilings=False):
        """One dict per (name, shapes, device[, parent op]) group, by total time."""
        groups = {}
        for r in self.records:
            if r.kind == kind:
                key = (r.name, r.shapes, r.device, r.parent, r.precision)
                groups.setdefault(key, []).append(r)
        grand = sum(r.duration_s for r in self.records if r.kind == kind) or 1.0
        refs = {dev: rates(self.devices.get(dev, dev), ceilings) for dev in {k[2] for k in groups}}
        rows = []
        for (name, shapes, device, parent, fmt), recs in groups.items():
            times = [r.duration_s for r in recs]
            total = sum(times)
            flops, nbytes = sum(r.flops for r in recs), sum(r.bytes for r in recs)
            row = {"kind": kind, "name": name, "parent": parent, "shapes": shapes,
                   "device": device, "calls": len(recs),
                   "launches": sum(r.launches for r in recs) if kind == "op" else len(recs),
                   "total_s": total, "median_s": statistics.median(times),
                   "percent": 100 * total / grand, "flops": flops, "bytes": nbytes,
                   "gflops": flops / total / 1e9 if total else 0.0,
                   "gbps": nbytes / total / 1e9 if total else 0.0, "timer": recs[0].timer,
                   "precision": fmt, "tensor_cores": any(r.tc for r in recs)}
            row.update(roofline(row, refs.get(device), name))
            rows.append(row)
        return sorted(rows, key=lambda r: -r["total_s"])

    def format_table(self, sort_by="total_s", limit=None, ceilings=True):
        """The table as text: ops, then kernel launches, each sorted by ``sort_by``."""
        lines = []
        for dev, dname in self.devices.items():
            ops = [r for r in self.ops if r.device == dev]
            if not any(r.device == dev for r in self.records):
                continue
            known = rates(dname, ceilings)
            lines.append(f"device {dev} ({dname}); timer {ops[0].timer if ops else '-'}; "
                         f"{len(ops)} ops, {sum(r.duration_s for r in ops) * 1e3:.3f} ms")
            peak, ceil = known.get("peak"), known.get("ceiling")
            lines.append("  peak: " + (f"{peak[0]}, {peak[1] / 1e9:,.0f} GFLOP/s fp32, "
                                       f"{peak[2] / 1e9:,.0f} GB/s" if peak else "unknown")
                         + "; measured ceiling: " +
                         (f"{ceil['matmul_gflops']:,.1f} GFLOP/s matmul, "
                          f"{ceil['copy_gbps']:,.1f} GB/s copy" if ceil else "not measured"))
            tensor = TENSOR_PEAKS.get(peak[0]) if peak else None
            if tensor:
                lines.append("  tensor-core peak (dense): " + ", ".join(
                    f"{f.upper()} {v / 1e9:,.0f} GFLOP/s" for f, v in tensor.items())
                    + "; ops marked @fmt/tc ran on tensor cores and are held against these")
        lines.append(f"precision policy: {get_precision()}")
        head = (f"{'name':<34} {'shapes':<36} {'calls':>5} {'launch':>6} {'total ms':>9} "
                f"{'%':>5} {'median us':>10} {'GFLOP/s':>9} {'GB/s':>8} {'bound':>8} "
                f"{'%peak':>6} {'%ceil':>6}")
        for kind in ("op", "kernel"):
            rows = self.summary(kind, ceilings)
            if not rows:
                continue
            rows.sort(key=lambda r: -r[sort_by] if isinstance(r[sort_by], (int, float))
                      else r[sort_by])
            lines += ["", f"{kind}s", head, "-" * len(head)]
            for r in rows[:limit]:
                name = r["name"] if kind == "op" else f"{r['name']} < {r['parent'] or '-'}"
                if r["precision"]:  # a reduced-precision op: its own row, its own peak
                    name += f"@{r['precision']}" + ("/tc" if r["tensor_cores"] else "")
                shapes = _fmt_shapes(r["shapes"])
                lines.append(
                    f"{name[:34]:<34} {shapes[:36]:<36} {r['calls']:>5} {r['launches']:>6} "
                    f"{r['total_s'] * 1e3:>9.3f} {r['percent']:>5.1f} {r['median_s'] * 1e6:>10.1f} "
                    f"{r['gflops']:>9.2f} {r['gbps']:>8.2f} {r['bound']:>8} "
                    f"{_pct(r['pct_peak']):>6} {_pct(r['pct_ceiling']):>6}")
        return "\n".join(lines)

    def table(self, sort_by="total_s", limit=None, ceilings=True, file=None):
        """Print format_table(...) (to ``file``, default stdout)."""
        print(self.format_table(sort_by, limit, ceilings), file=file or sys.stdout)

    def __str__(self):
        return self.format_table(ceilings=False)

    def export_chrome_trace(self, path):
        """A Trace Event Format file: one complete ("X") event per op and kernel launch."""
        events, pids = [], {}
        for dev in {r.device: None for r in self.records}:
            pids[dev] = len(pids) + 1
            events.append({"name": "process_name", "ph": "M", "pid": pids[dev], "tid": 0,
                           "args": {"name": f"gpudl {dev} ({self.devices[dev]})"}})
            for tid, what in ((1, "ops"), (2, "kernels")):
                events.append({"name": "thread_name", "ph": "M", "pid": pids[dev], "tid": tid,
                               "args": {"name": what}})
        for r in self.records:
            events.append({"name": r.name, "cat": r.kind, "ph": "X",
                           "ts": r.start_s * 1e6, "dur": r.duration_s * 1e6,
                           "pid": pids.get(r.device, 0), "tid": 1 if r.kind == "op" else 2,
                           "args": {"shapes": _fmt_shapes(r.shapes), "flops": r.flops,
                                    "bytes": r.bytes, "launches": r.launches,
                                    "parent": r.parent, "timer": r.timer}})
        with open(path, "w") as f:
            json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, f)


def _kernel_name(kernel):
    return getattr(kernel, "__name__", None) or getattr(getattr(kernel, "py_func", None),
                                                        "__name__", None) or repr(kernel)


def _matmul_names():
    """id -> name[variant] for the matmul kernels, whose four variants share a name."""
    from .kernels import matmul as mm
    return {id(k): f"{_kernel_name(k)}[{variant}]"
            for version in mm.KERNELS.values() for variant, k in version.items()}


def _pct(v):
    return "-" if v is None else f"{v:.1f}"


Profiler = profile
__all__ = ["profile", "Profiler", "Record", "measure_ceilings", "device_peak"]
