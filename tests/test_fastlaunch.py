"""FastLauncher against numba's own typing, flattening and launch, without a GPU.

The arrays are stand-ins for CuPy arrays over host memory: they carry the
attributes FastLauncher reads (shape, strides, dtype, itemsize, size,
data.ptr) and a __dlpack__ that hands numba the same memory, so numba's real
code (typeof's DLPack path, _Kernel._prepare_args, _Kernel.launch) runs on
them unchanged. Only the driver calls are stood in for. The simulator replaces
numba's dispatcher, so this runs in the normal pytest process only.
"""
import ctypes
import enum
from types import SimpleNamespace

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

from gpudl.backend import simulator_enabled

if simulator_enabled():
    pytest.skip("NUMBA_ENABLE_CUDASIM is set: numba's dispatcher is replaced",
                allow_module_level=True)

from numba import cuda  # noqa: E402
from numba.cuda import types  # noqa: E402
from numba.cuda.dispatcher import _Kernel  # noqa: E402
from numba.cuda.typing.typeof import typeof  # noqa: E402

from gpudl.backend import fastlaunch as fl  # noqa: E402
from gpudl.kernels import dropout as dk  # noqa: E402
from gpudl.kernels import elementwise as ew  # noqa: E402


class FakeCupy:
    """What FastLauncher reads of a cupy.ndarray, over a host array."""

    def __init__(self, host):
        self._host = host
        self.shape, self.strides, self.dtype = host.shape, host.strides, host.dtype
        self.itemsize, self.size = host.itemsize, host.size
        self.data = SimpleNamespace(ptr=host.ctypes.data)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "version": 3,
                "data": (self.data.ptr, False),
                "strides": None if self._host.flags.c_contiguous else self.strides}

    def __dlpack__(self, stream=None, max_version=None, **kw):
        return self._host.__dlpack__(max_version=max_version)  # a host array takes no stream

    def __dlpack_device__(self):
        return self._host.__dlpack_device__()


def strided(shape, strides, dtype=np.float32):
    base = np.zeros(4096, dtype)
    return as_strided(base[64:], shape, strides)  # room for negative strides


EDGE = [((), ()), ((5,), (4,)), ((5,), (8,)), ((5,), (-4,)), ((5,), (0,)), ((1,), (0,)),
        ((1,), (100,)), ((0,), (4,)), ((4, 5), (20, 4)), ((4, 5), (4, 16)), ((4, 1), (4, 100)),
        ((1, 4), (100, 4)), ((1, 4), (4, 100)), ((1, 1), (8, 12)), ((0, 3), (12, 4)),
        ((3, 0), (4, 4)), ((2, 0, 3), (4, 4, 4)), ((4, 1, 5), (20, 996, 4)),
        ((1, 5, 4), (4, 4, 20)), ((2, 3), (-12, 4)), ((3, 1), (4, 0)), ((4, 3), (0, 4)),
        ((2, 3, 4), (48, 16, 4)), ((2, 3, 4), (4, 8, 24)), ((2, 3, 4), (96, 16, 4))]


def random_views(n=300, seed=0):
    """Views of C arrays as code makes them: transposes, steps, reversals, slices."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        shape = tuple(int(d) for d in rng.integers(1, 6, rng.integers(1, 5)))
        if rng.random() < 0.1:
            shape = shape[:-1] + (0,)
        x = np.zeros(shape, np.float32)
        r = rng.random()
        if r < 0.25:
            x = x.T
        elif r < 0.5:
            x = x.transpose(rng.permutation(x.ndim))
        idx = []
        for _ in range(x.ndim):
            r = rng.random()
            idx.append(slice(None, None, int(rng.choice([2, -1]))) if r < 0.25
                       else slice(0, int(rng.integers(1, 3))) if r < 0.4 else slice(None))
        yield x[tuple(idx)]


@pytest.fixture
def launcher():
    return fl.FastLauncher(array_types=(FakeCupy,))


def derived_type(launcher, value):
    packed = launcher.pack([value])
    assert packed is not None, f"{value!r} should be handled"
    return launcher.numba_types(packed[0])[0]


def test_module_is_available_here():
    assert fl.AVAILABLE, fl.WHY_NOT


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_])
@pytest.mark.parametrize("shape,strides", EDGE)
def test_array_type_equals_numba_typeof(launcher, dtype, shape, strides):
    item = np.dtype(dtype).itemsize
    x = strided(shape, tuple(s // 4 * item for s in strides), dtype)
    assert derived_type(launcher, FakeCupy(x)) == typeof(FakeCupy(x))


def test_array_type_equals_numba_typeof_random_views(launcher):
    for x in random_views():
        f = FakeCupy(x)
        assert derived_type(launcher, f) == typeof(f), (x.shape, x.strides)


def test_numba_types_cupy_like_arrays_through_dlpack_not_the_interface(launcher):
    """numba 0.30.4's __cuda_array_interface__ typing compares strides with the
    dtype's bit width, so explicit C strides read as "A"; an object that also
    has __dlpack__, as CuPy arrays do, is typed from DLPack instead."""
    x = np.zeros((4, 5), np.float32)
    cai_only = SimpleNamespace(__cuda_array_interface__=dict(
        FakeCupy(x).__cuda_array_interface__, strides=x.strides))
    assert typeof(cai_only).layout == "A"
    assert typeof(FakeCupy(x)).layout == "C" == derived_type(launcher, FakeCupy(x)).layout
    assert launcher.pack([cai_only]) is None  # not a registered array type: the plain path


def test_layout_cases():
    assert fl.layout_of((4, 5), (20, 4), 4) == "C"
    assert fl.layout_of((4, 5), (4, 16), 4) == "F"
    assert fl.layout_of((4, 5), (40, 8), 4) == "A"
    assert fl.layout_of((4, 1), (4, 100), 4) == "C"  # extent-1 dimensions are skipped
    assert fl.layout_of((5,), (6,), 4) is None       # DLPack would floor this stride
    assert fl.layout_of((1,), (6,), 4) is None


def test_array_fields_follow_numba_data_model():
    from numba.cuda.datamodel import default_manager
    model = default_manager.lookup(types.Array(types.float32, 2, "A"))
    assert list(model._fields) == ["meminfo", "parent", "nitems", "itemsize", "data", "shape",
                                   "strides"]


def numba_flatten(ty, value):
    """numba's own _Kernel._prepare_args for one argument."""
    k = _Kernel.__new__(_Kernel)
    k.extensions = []
    out = []
    k._prepare_args(ty, value, 0, [], out)
    return out


def comparable(values):
    return [(type(v), v.value) if isinstance(v, ctypes._SimpleCData) else (type(v), v)
            for v in values]


def test_array_flattening_equals_prepare_args(launcher):
    views = [strided(s, t) for s, t in EDGE] + list(random_views(100, seed=1))
    for x in views:
        f = FakeCupy(x)
        expect = numba_flatten(typeof(f), f)
        assert comparable(launcher.pack([f])[1]) == comparable(expect), (x.shape, x.strides)
        assert len(expect) == 5 + 2 * x.ndim


SCALARS = [(np.float32(1.5), types.float32), (1.5, types.float64), (True, types.boolean),
           (False, types.boolean), (np.bool_(True), types.boolean), (np.uint64(3), types.uint64),
           (7, types.int64), (-7, types.int64), (2 ** 40, types.int64), (-(2 ** 63), types.int64),
           (2 ** 63, types.uint64), (2 ** 64 - 1, types.uint64), (np.int32(-3), types.int32),
           (np.int64(5), types.int64), (np.float64(2.0), types.float64), (np.int8(1), types.int8),
           (np.uint8(200), types.uint8), (np.uint32(9), types.uint32), (np.int16(-2), types.int16),
           (np.longlong(3), types.int64)]


@pytest.mark.parametrize("value,expect", SCALARS, ids=[repr(v) for v, _ in SCALARS])
def test_scalar_type_and_value_equal_numba(launcher, value, expect):
    ty = derived_type(launcher, value)
    assert ty == expect == typeof(value)
    assert comparable(launcher.pack([value])[1]) == comparable(numba_flatten(ty, value))


class Colour(enum.IntEnum):
    RED = 1


UNHANDLED = [1 + 2j, np.complex64(1), np.float16(1), (1, 2), np.zeros(3, np.float32), "s",
             2 ** 64, -(2 ** 63) - 1, Colour.RED, None]


@pytest.mark.parametrize("value", UNHANDLED, ids=[repr(v) for v in UNHANDLED])
def test_unhandled_kinds_are_not_packed(launcher, value):
    assert launcher.pack([FakeCupy(np.zeros(4, np.float32)), value]) is None


def test_odd_strides_are_not_packed(launcher):
    raw = np.zeros(64, np.uint8)
    x = as_strided(raw.view(np.float32), (3,), (6,))  # a stride that is not a multiple of 4
    assert launcher.pack([FakeCupy(x)]) is None


# ---- the launch itself, numba's and ours, with the driver stood in for --------

@cuda.jit
def six(x, alpha, y, n, flag, out):
    pass


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, *a):
        self.calls.append(a)


STREAM = SimpleNamespace(handle=0)  # what _to_core_stream gives numba's _Kernel.launch


def fake_overload(argtypes, debug=False):
    k = _Kernel.__new__(_Kernel)
    k.extensions, k.debug, k.cooperative, k.launch_config_sensitive = [], debug, False, False
    k.signature = types.void(*argtypes)
    cufunc = SimpleNamespace(kernel=object())
    k._codelibrary = SimpleNamespace(get_cufunc=lambda: cufunc)
    return k


def six_args():
    x = FakeCupy(np.arange(8, dtype=np.float32))
    y = FakeCupy(np.zeros((3, 4), np.float64).T)
    out = FakeCupy(np.zeros((6, 6), np.int32)[::2, 1:5])
    return (x, np.float32(2.0), y, 7, True, out)


@pytest.fixture
def driver(monkeypatch):
    """Stand-ins for the two driver calls; yields (ours, numba's) recorders."""
    ours, theirs = Recorder(), Recorder()
    monkeypatch.setattr(fl, "_core_launch", ours)
    ours.streams = []  # what was converted to a cuda.core stream, once per stream
    monkeypatch.setattr(fl, "_to_core_stream", lambda s: ours.streams.append(s) or STREAM)
    import numba.cuda.dispatcher as nbd
    monkeypatch.setattr(nbd, "launch", theirs)
    six.overloads.clear()
    monkeypatch.setattr(six, "_launch_config_sensitive", False)
    yield ours, theirs
    six.overloads.clear()


def test_launch_equals_numba_kernel_launch(launcher, driver):
    ours, theirs = driver
    args = six_args()
    argtypes = tuple(typeof(a) for a in args)
    assert argtypes[2].layout == "F" and argtypes[5].layout == "A"
    overload = fake_overload(argtypes)
    six.overloads[argtypes] = overload
    launcher.launch(six, (2, 3), 64, "caller's stream", args)
    # what CUDADispatcher.call does after configure() and the overload lookup
    overload.launch(args, (2, 3, 1), (64, 1, 1), STREAM, 0)
    (mine,), (numbas,) = ours.calls, theirs.calls
    assert mine[0] is numbas[0] is STREAM
    assert mine[1] == numbas[1]  # LaunchConfig: grid, block, shared memory, cooperative
    assert mine[2] is numbas[2] is overload._codelibrary.get_cufunc().kernel
    assert comparable(mine[3:]) == comparable(numbas[3:])
    assert (launcher.fast_launches, launcher.plain_launches) == (1, 0)
    launcher.launch(six, (2, 3), 64, "caller's stream", six_args())  # cached entry and config
    assert launcher.fast_launches == 2 and ours.calls[1][1] is ours.calls[0][1]
    assert ours.streams == ["caller's stream"]


def test_first_call_goes_through_numba_then_fast(launcher, driver, monkeypatch):
    ours, _ = driver
    args = six_args()
    argtypes = tuple(typeof(a) for a in args)
    plain = Recorder()

    def compile_and_launch(kernel, grid, block, stream, a):  # as numba's plain launch would
        plain(kernel, grid, block, stream, a)
        kernel.overloads[argtypes] = fake_overload(argtypes)
    monkeypatch.setattr(launcher, "plain", compile_and_launch)
    launcher.launch(six, 4, 256, 0, args)
    assert len(plain.calls) == 1 and not ours.calls
    launcher.launch(six, 4, 256, 0, args)
    assert len(plain.calls) == 1 and len(ours.calls) == 1


def test_plain_when_numba_compiles_no_matching_overload(launcher, driver, monkeypatch):
    plain = Recorder()
    monkeypatch.setattr(launcher, "plain", plain)
    for _ in range(3):
        launcher.launch(six, 4, 256, 0, six_args())
    assert len(plain.calls) == 3 and not driver[0].calls


def test_plain_when_numba_types_differently(launcher, driver, monkeypatch):
    args = six_args()
    argtypes = tuple(typeof(a) for a in args)
    six.overloads[argtypes] = fake_overload(argtypes)
    monkeypatch.setattr(six, "typeof_pyval", lambda v: types.float64)
    plain = Recorder()
    monkeypatch.setattr(launcher, "plain", plain)
    launcher.launch(six, 4, 256, 0, args)
    assert len(plain.calls) == 1 and not driver[0].calls


@pytest.mark.parametrize("why", ["debug", "launch-config-sensitive", "list grid",
                                 "compile disabled", "specialized", "extensions",
                                 "overload launch-config-sensitive"])
def test_plain_for_kernels_numba_launches_differently(launcher, driver, monkeypatch, why):
    args = six_args()
    argtypes = tuple(typeof(a) for a in args)
    six.overloads[argtypes] = fake_overload(argtypes, debug=why == "debug")
    plain = Recorder()
    monkeypatch.setattr(launcher, "plain", plain)
    if why == "compile disabled":
        monkeypatch.setattr(six, "_can_compile", False)
    elif why == "specialized":
        monkeypatch.setattr(six, "_specialized", True)
    elif why == "extensions":
        monkeypatch.setitem(six.targetoptions, "extensions", [object()])
    elif why == "overload launch-config-sensitive":
        six.overloads[argtypes].launch_config_sensitive = True
    if why == "launch-config-sensitive":
        launcher.launch(six, 4, 256, 0, args)
        assert len(driver[0].calls) == 1
        monkeypatch.setattr(six, "_launch_config_sensitive", True)
    launcher.launch(six, [4] if why == "list grid" else 4, 256, 0, args)
    assert len(plain.calls) == 1


@pytest.mark.parametrize("dtype", [np.dtype("M8[s]"),
                                   np.dtype([("a", np.int32), ("b", np.float32)])],
                         ids=["datetime64", "record"])
def test_plain_for_dtypes_without_dlpack_export(launcher, driver, monkeypatch, dtype):
    x = FakeCupy(np.zeros(4, dtype))
    with pytest.raises(TypeError):
        launcher.numba_types(launcher.pack([x])[0])
    plain = Recorder()
    monkeypatch.setattr(launcher, "plain", plain)
    launcher.launch(six, 4, 256, 0, (x,) * 6)
    assert len(plain.calls) == 1 and not driver[0].calls


def test_grid_and_block_normalised_like_numba(launcher, driver):
    from numba.cuda.errors import normalize_kernel_dimensions
    args = six_args()
    argtypes = tuple(typeof(a) for a in args)
    six.overloads[argtypes] = fake_overload(argtypes)
    for grid, block in [(4, 256), ((4,), (256,)), ((2, 3), (16, 16)), ((1, 2, 3), (8, 4, 2))]:
        launcher.launch(six, grid, block, 0, args)
        config = driver[0].calls[-1][1]
        assert (config.grid, config.block) == normalize_kernel_dimensions(grid, block)
        assert config.shmem_size == 0 and not config.is_cooperative
    with pytest.raises(ValueError):
        launcher.launch(six, (1, 2, 3, 4), 256, 0, args)  # numba's own error, via the plain path


def test_non_dispatcher_kernels_use_the_plain_launch(launcher):
    class Kernel:
        def __init__(self):
            self.launches = []

        def __getitem__(self, config):
            return lambda *a: self.launches.append((config, a))
    k = Kernel()
    args = (FakeCupy(np.zeros(4, np.float32)), np.float32(1))
    launcher.launch(k, 4, 256, "s", args)
    launcher.launch(k, 4, 256, "s", args + (1j,))
    assert k.launches == [((4, 256, "s"), args), ((4, 256, "s"), args + (1j,))]
    assert launcher.plain_launches == 2


def test_unsupported_numba_cuda_version(monkeypatch):
    import numba_cuda
    monkeypatch.setattr(numba_cuda, "__version__", "0.99.0")
    internals, why = fl._load()
    assert internals is None and "0.99.0" in why
    monkeypatch.setattr(fl, "AVAILABLE", False)
    launcher = fl.FastLauncher(array_types=(FakeCupy,))
    assert not launcher.enabled
    launches = []
    k = SimpleNamespace(__getitem__=None)
    monkeypatch.setattr(launcher, "plain", lambda *a: launches.append(a))
    launcher.launch(k, 1, 1, 0, (1,))
    assert len(launches) == 1


def test_requested_only_by_env_and_never_under_the_simulator(monkeypatch):
    monkeypatch.delenv("GPUDL_FAST_LAUNCH", raising=False)
    assert not fl.requested(simulator=False)
    monkeypatch.setenv("GPUDL_FAST_LAUNCH", "1")
    assert fl.requested(simulator=False) == fl.AVAILABLE
    assert not fl.requested(simulator=True)



def test_backend_sends_every_launch_through_the_launcher_when_requested(monkeypatch):
    from gpudl.backend import cuda as cuda_backend
    seen = []

    class Recorder:
        def launch(self, kernel, grid, block, stream, args):
            seen.append((kernel, grid, block, len(args)))

    monkeypatch.setattr(fl, "requested", lambda simulator: True)
    monkeypatch.setattr(fl, "FastLauncher", Recorder)
    be = cuda_backend.CUDABackend(simulator=True)  # host arrays; nothing really launches
    be.relu(np.ones(8, np.float32))
    assert seen and seen[0][0] is ew.relu and seen[0][3] == 2

    monkeypatch.setattr(fl, "requested", lambda simulator: False)
    assert cuda_backend.CUDABackend(simulator=True)._fast is None

# ---- the derived signature compiles (what the first, plain launch would run) ---

@pytest.mark.parametrize("kernel,args", [
    (ew.relu, lambda: (np.zeros(8, np.float32), np.zeros(8, np.float32))),
    (ew.axpby, lambda: (np.float32(2), np.zeros(8, np.float32), np.float32(3),
                        np.zeros(8, np.float32), np.zeros(8, np.float32))),
    (dk.multiply, lambda: (np.zeros(8, np.float64), np.zeros(8, np.float64),
                           np.zeros(8, np.float64))),
], ids=["relu", "axpby", "multiply"])
def test_derived_signature_compiles_for_sm90(launcher, kernel, args):
    values = [FakeCupy(a) if isinstance(a, np.ndarray) else a for a in args()]
    argtypes = launcher.numba_types(launcher.pack(values)[0])
    assert argtypes == tuple(typeof(v) for v in values)
    ptx, restype = cuda.compile_ptx(kernel.py_func, argtypes, cc=(9, 0))
    assert restype == types.void and ".visible .entry" in ptx
