"""An opt-in cheap eager launch for numba.cuda kernels with CuPy arguments.

``kernel[grid, block, stream](*args)`` costs ~63 us of host time per launch on
an H200, almost all of it per argument: numba's C dispatcher types every
argument through ``typeof``, which for a CuPy array means a DLPack export
(``_typeof_dlpack``), then ``_Kernel._prepare_args`` exports each array
through DLPack a second time to flatten it. ``FastLauncher.launch`` does the
same launch from attributes CuPy already has:

1. a signature key per call: (dtype, ndim, layout) per array, the Python or
   NumPy type per scalar;
2. per (dispatcher, key), once: the numba types that key stands for, checked
   against numba's own ``typeof`` of that call's arguments, and the compiled
   ``_Kernel`` numba's dispatcher keeps for exactly those types. That first
   call goes through numba's plain path, which compiles if needed, so the
   fast path only ever runs machine code numba compiled for the same types;
3. the flattened kernel arguments built as ``_Kernel._prepare_args`` builds
   them, from ``.data.ptr``, ``.shape``, ``.strides``, ``.itemsize``, ``.size``;
4. the same ``cuda.core`` ``launch`` numba's ``_Kernel.launch`` calls, with the
   same launch config (grid, block, shared memory 0, cooperative flag) and
   stream object.

Anything else goes through ``kernel[grid, block, stream](*args)`` unchanged:
kernels that are not plain ``CUDADispatcher`` objects, argument kinds not
listed below (arrays only of the exact types given, by default
``cupy.ndarray``: numba types an object with only ``__cuda_array_interface__``
by another path), an unknown numba-cuda version, the simulator.

numba-cuda internals relied on, as of 0.30.4 (``numba/cuda/...``):

* ``dispatcher.CUDADispatcher.overloads``: dict from the argument-type tuple
  to the compiled ``_Kernel``, filled by ``CUDADispatcher.compile``. With
  compilation enabled, ``Dispatcher_cuda_call`` (cext/_dispatcher.cpp) asks
  for an exact type match, so the ``_Kernel`` under ``typeof(args)`` is the one
  numba itself would launch. ``CUDADispatcher.typeof_pyval`` is numba's
  argument typing; it is called once per key to check the types derived here.
* ``CUDADispatcher.specialized``, ``.targetoptions["extensions"]``,
  ``._launch_config_sensitive`` and ``._can_compile``: when set (cleared, for
  the last), ``CUDADispatcher.call`` does more than an exact-type lookup (a
  fixed overload, argument-rewriting extensions, a dispatcher per launch
  config, overloads chosen by type conversion), so those take the plain path.
* ``dispatcher._Kernel.launch`` and ``._prepare_args``: an array argument is
  flattened to meminfo 0, parent 0, nitems, itemsize, data pointer, shape...,
  strides in bytes... (the fields of numba's array data model); an Integer
  scalar to ``ctypes.c_<type>``, float32 to ``c_float``, float64 to
  ``c_double``, a boolean as the value itself. ``_Kernel.debug`` (error-code
  readback after the launch) and ``.extensions`` send a kernel to the plain
  path; ``.cooperative`` is passed on as numba passes it.
* ``_Kernel._codelibrary.get_cufunc().kernel``: the ``cuda.core`` Kernel for
  the current device, cached here per (dispatcher, key): one FastLauncher
  serves one device, as one CUDABackend does.
* ``dispatcher.launch`` and ``dispatcher.LaunchConfig`` (cuda.core's, as
  numba imports them) with ``_compat.CUDA_CORE_GE_1_0`` choosing the
  cooperative keyword; ``cudadrv.driver._to_core_stream`` for the stream (what
  ``_LaunchConfiguration.__init__`` does); ``errors.normalize_kernel_dimensions``
  for grid and block (what ``CUDADispatcher.configure`` does).
* Typing: a CuPy array has ``__dlpack__`` and no ``_numba_type_``, so
  ``typing.typeof.typeof_impl`` types it in ``_typeof_dlpack``: layout "C" if
  cuda.core's ``StridedLayout.is_contiguous_c``, else "F" if
  ``is_contiguous_f``, else "A" (numpy's rule: dimensions of extent 1 are
  skipped, an empty array is both), strides being CuPy's // itemsize; and
  ``readonly`` from the DLPack flags, which CuPy always exports as 0. Python
  scalars as ``_typeof_int`` / ``_typeof_float`` / ``_typeof_bool``, NumPy
  scalars as ``numpy_support.map_arrayscalar_type``.

What the fast path leaves out of numba's plain path, on purpose: the DLPack
hand-over of the launch stream (CuPy makes the consumer stream wait for its
current stream when they differ), so the launch stream must be CuPy's current
stream, as CUDABackend._stream() makes it; ``_LaunchConfiguration``'s
``pre_launch_callbacks`` and low-occupancy warning (gpudl uses neither).

Re-check all of the above when numba-cuda is upgraded, then add the version
to SUPPORTED_NUMBA_CUDA; any other version launches through the plain path.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

from . import simulator_enabled

SUPPORTED_NUMBA_CUDA = ("0.30.4",)


def _load():
    """(numba-cuda internals, None) or (None, why not), decided at import."""
    if simulator_enabled():  # numba.cuda.dispatcher is the simulator's then
        return None, "numba's CUDA simulator is on"
    try:
        import numba_cuda
        version = getattr(numba_cuda, "__version__", "unknown")
        if version not in SUPPORTED_NUMBA_CUDA:
            return None, (f"written for numba-cuda {', '.join(SUPPORTED_NUMBA_CUDA)}, "
                          f"found {version}")
        from numba.cuda import _compat, dispatcher, errors, types
        from numba.cuda.cudadrv import driver
        from numba.cuda.np import numpy_support
    except Exception as e:  # no numba-cuda, or one laid out differently
        return None, f"numba-cuda internals not importable: {e!r}"
    return {"dispatcher": dispatcher, "driver": driver, "errors": errors, "types": types,
            "numpy_support": numpy_support, "ge_1_0": _compat.CUDA_CORE_GE_1_0}, None


_NB, WHY_NOT = _load()
AVAILABLE = _NB is not None

# The two calls that reach the driver; module-level so tests without a GPU can
# stand in for them.
if AVAILABLE:
    _core_launch = _NB["dispatcher"].launch
    _to_core_stream = _NB["driver"]._to_core_stream


def requested(simulator: bool) -> bool:
    """True when GPUDL_FAST_LAUNCH=1, on a real GPU, with a supported numba-cuda."""
    return os.environ.get("GPUDL_FAST_LAUNCH") == "1" and not simulator and AVAILABLE


def layout_of(shape, strides, itemsize):
    """The layout numba's DLPack typing gives an array: "C", "F" or "A"; None
    when a stride is not a multiple of itemsize (DLPack would floor it)."""
    nd = len(shape)
    if nd == 1:  # the common case, without the loops
        s = strides[0]
        if s == itemsize:
            return "C"
        if s % itemsize:
            return None
        return "C" if shape[0] <= 1 else "A"
    if nd == 0:
        return "C"
    for s in strides:
        if s % itemsize:
            return None
    if 0 in shape:
        return "C"
    expect = itemsize
    for n, s in zip(reversed(shape), reversed(strides)):
        if n != 1:
            if s != expect:
                break
            expect *= n
    else:
        return "C"
    expect = itemsize
    for n, s in zip(shape, strides):
        if n != 1:
            if s != expect:
                return "A"
            expect *= n
    return "F"


def _scalar_kinds():
    """type -> (key, numba type, converter); None as converter: passed as is."""
    if not AVAILABLE:
        return {}
    types, from_dtype = _NB["types"], _NB["numpy_support"].from_dtype

    def conv(ty):
        if ty == types.boolean:
            return None
        if ty == types.float32:
            return ctypes.c_float
        if ty == types.float64:
            return ctypes.c_double
        return getattr(ctypes, f"c_{ty}")  # as _prepare_args does for Integer

    kinds = {float: ("py-float", types.float64, ctypes.c_double),
             bool: ("py-bool", types.boolean, None)}
    for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.longlong, np.uint8,
              np.uint16, np.uint32, np.uint64, np.ulonglong, np.float32, np.float64):
        ty = from_dtype(np.dtype(t))
        kinds[t] = (t, ty, conv(ty))
    return kinds


_SCALARS = _scalar_kinds()
_INT64 = ("py-int64", ctypes.c_int64)
_UINT64 = ("py-uint64", ctypes.c_uint64)
_PLAIN = "plain"  # an entry meaning: this (kernel, key) always takes the plain path


class FastLauncher:
    """launch(kernel, grid, block, stream, args): numba's launch without its
    per-argument typing and DLPack exports; see the module docstring."""

    def __init__(self, array_types=None):
        self.enabled = AVAILABLE
        self.why_not = WHY_NOT
        if array_types is None:
            try:
                import cupy
                array_types = (cupy.ndarray,)
            except ImportError:
                array_types = ()
        # Exact types only: a subclass could carry _numba_type_ or its own DLPack.
        self._arrays = frozenset(array_types)
        # (id(kernel), signature key) -> (cuda.core kernel, cooperative, kernel) or _PLAIN
        self._entries = {}
        self._configs = {}   # (grid, block, cooperative) -> LaunchConfig
        self._streams = {}   # stream as given -> cuda.core Stream
        self._array_types = {}  # (dtype, ndim, layout) -> numba Array type
        self.fast_launches = self.plain_launches = 0

    # ---- the per-call path ---------------------------------------------------
    def launch(self, kernel, grid, block, stream, args):
        packed = self.pack(args) if self.enabled else None
        if packed is None:
            return self.plain(kernel, grid, block, stream, args)
        sig, flat = packed
        key = (id(kernel), sig)
        entry = self._entries.get(key)
        if entry is None:
            entry, launched = self._first(kernel, grid, block, stream, args, key)
            if launched:
                return None
        if entry is _PLAIN or kernel._launch_config_sensitive:
            return self.plain(kernel, grid, block, stream, args)
        cukernel, cooperative, _ = entry
        try:
            config = self._configs[grid, block, cooperative]
        except (KeyError, TypeError):  # TypeError: a list; numba's configure refuses it too
            config = self._config(grid, block, cooperative)
            if config is None:
                return self.plain(kernel, grid, block, stream, args)
        try:
            core_stream = self._streams[stream]
        except (KeyError, TypeError):
            core_stream = self._stream(stream)
        _core_launch(core_stream, config, cukernel, *flat)
        self.fast_launches += 1
        return None

    def pack(self, args):
        """(signature key, flattened kernel arguments as _Kernel._prepare_args
        builds them), or None when an argument is of a kind not handled here."""
        sig = []
        flat = []
        arrays = self._arrays
        for a in args:
            t = type(a)
            if t in arrays:
                shape, strides, itemsize = a.shape, a.strides, a.itemsize
                if len(shape) == 1 and strides[0] == itemsize:  # most calls: skip the call
                    layout = "C"
                else:
                    layout = layout_of(shape, strides, itemsize)
                    if layout is None:
                        return None
                sig.append((a.dtype, len(shape), layout))
                flat += (0, 0, a.size, itemsize, a.data.ptr)  # meminfo, parent, nitems, ...
                flat += shape
                flat += strides
                continue
            kind = _SCALARS.get(t)
            if kind is None:
                if t is not int:
                    return None
                # numba types a Python int by its value (_typeof_int)
                if -(1 << 63) <= a < (1 << 63):
                    kind = _INT64
                elif 0 <= a < (1 << 64):
                    kind = _UINT64
                else:
                    return None
                sig.append(kind[0])
                flat.append(kind[1](a))
                continue
            sig.append(kind[0])
            flat.append(a if kind[2] is None else kind[2](a))
        return tuple(sig), flat

    def plain(self, kernel, grid, block, stream, args):
        """What CUDABackend.launch does today."""
        self.plain_launches += 1
        kernel[grid, block, stream](*args)

    # ---- once per (kernel, key), per launch config, per stream ---------------
    def numba_types(self, sig):
        """The numba argument types a signature key stands for."""
        types = []
        for k in sig:
            if isinstance(k, tuple):
                ty = self._array_types.get(k)
                if ty is None:
                    dtype, ndim, layout = k
                    if dtype.kind not in "biufc":  # CuPy's DLPack export refuses the others
                        raise TypeError(f"no DLPack export for dtype {dtype}")
                    ty = _NB["types"].Array(_NB["numpy_support"].from_dtype(dtype), ndim,
                                            layout, readonly=False)
                    self._array_types[k] = ty
                types.append(ty)
            elif k == _INT64[0]:
                types.append(_NB["types"].int64)
            elif k == _UINT64[0]:
                types.append(_NB["types"].uint64)
            else:
                types.append(next(v[1] for v in _SCALARS.values() if v[0] == k))
        return tuple(types)

    def _first(self, kernel, grid, block, stream, args, key):
        """Make the entry for a new key; (entry, whether this call already launched)."""
        if not self._eligible(kernel):
            self._entries[key] = _PLAIN
            return _PLAIN, False
        try:
            argtypes = self.numba_types(key[1])
        except Exception:  # a dtype this path leaves to numba, which types it its own way
            argtypes = None
        if argtypes is None or argtypes != tuple(kernel.typeof_pyval(a) for a in args):
            self._entries[key] = _PLAIN  # derived types disagree with numba's: never guess
            return _PLAIN, False
        overload = kernel.overloads.get(argtypes)
        launched = False
        if overload is None:
            # numba compiles (with its launch config in scope) and launches;
            # errors reach the caller and the key stays unknown.
            self.plain(kernel, grid, block, stream, args)
            launched = True
            overload = kernel.overloads.get(argtypes)
        if (overload is None or overload.debug or overload.extensions
                or getattr(overload, "launch_config_sensitive", False)):
            entry = _PLAIN
        else:
            entry = (overload._codelibrary.get_cufunc().kernel, bool(overload.cooperative), kernel)
        self._entries[key] = entry
        return entry, launched

    @staticmethod
    def _eligible(kernel):
        disp = _NB["dispatcher"]
        # _can_compile False would let numba's dispatcher pick an overload by
        # conversion rather than by exact type, which a lookup cannot mirror.
        return (isinstance(kernel, disp.CUDADispatcher) and not kernel.specialized
                and kernel._can_compile
                and not kernel.targetoptions.get("extensions")
                and not kernel._launch_config_sensitive)

    def _config(self, grid, block, cooperative):
        try:
            griddim, blockdim = _NB["errors"].normalize_kernel_dimensions(grid, block)
            hash((grid, block))
        except (TypeError, ValueError):
            return None
        coop = {"is_cooperative" if _NB["ge_1_0"] else "cooperative_launch": cooperative}
        config = _NB["dispatcher"].LaunchConfig(grid=griddim, block=blockdim, shmem_size=0,
                                                **coop)
        self._configs[grid, block, cooperative] = config
        return config

    def _stream(self, stream):
        core = _to_core_stream(stream)
        try:
            self._streams[stream] = core  # the key keeps a numba Stream alive
        except TypeError:
            pass
        return core


__all__ = ["FastLauncher", "AVAILABLE", "WHY_NOT", "SUPPORTED_NUMBA_CUDA", "requested",
           "layout_of"]
