"""Channel concatenation and split on the CPU backend: results and error messages.

The CUDA backend is checked against these in tests/cuda/test_concat_kernels.py.
"""
import numpy as np
import pytest

from gpudl.backend.cpu import CPUBackend
from gpudl.errors import ShapeError

cpu = CPUBackend()


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("rest", [(), (3, 2)])
def test_concat_then_split_round_trips(rest):
    xs = [rand(2, c, *rest, seed=c) for c in (1, 3, 0, 2)]
    whole = cpu.concat_channels(xs)
    assert whole.shape == (2, 6) + rest and whole.flags.c_contiguous
    np.testing.assert_array_equal(whole[:, 1:4], xs[1])
    pieces = cpu.split_channels(whole, [1, 3, 0, 2])
    assert len(pieces) == 4
    for piece, x in zip(pieces, xs):
        assert piece.flags.c_contiguous
        np.testing.assert_array_equal(piece, x)


def test_outputs_are_new_arrays():
    x = rand(1, 2, 2, 2)
    whole = cpu.concat_channels([x])
    (piece,) = cpu.split_channels(x, [2])
    assert not np.shares_memory(whole, x) and not np.shares_memory(piece, x)
    assert piece.flags.c_contiguous


def test_sizes_may_be_any_sequence_of_ints():
    g = rand(2, 5)
    pieces = cpu.split_channels(g, (np.int64(2), 3))
    np.testing.assert_array_equal(pieces[1], g[:, 2:])


@pytest.mark.parametrize("shapes", [
    [(2, 3, 4, 4), (2, 3, 4, 5)],            # width differs
    [(2, 3, 4, 4), (3, 1, 4, 4)],            # batch differs
    [(2, 3), (2, 1), (1, 4)],                # batch differs, 2-D, third of three
    [(2, 3, 4, 4), (2, 3)],                  # mixed ranks
    [(2, 3, 4), (2, 3, 4)],                  # 3-D
    [(5,)],                                  # 1-D
])
def test_concat_mismatch_names_every_shape(shapes):
    with pytest.raises(ShapeError, match="concat_channels") as err:
        cpu.concat_channels([np.zeros(s) for s in shapes])
    assert ", ".join(map(str, shapes)) in str(err.value)


def test_concat_empty_list():
    with pytest.raises(ShapeError, match=r"one or more arrays.*got shapes \[\]"):
        cpu.concat_channels([])


def test_concat_needs_a_list():
    with pytest.raises(TypeError, match="list or tuple.*ndarray"):
        cpu.concat_channels(np.zeros((2, 3, 4, 4)))


@pytest.mark.parametrize("shape,sizes,total", [
    ((2, 6, 3, 3), [2, 3], 5),               # too few channels
    ((2, 6), [4, 4], 8),                     # too many
    ((2, 6), [7, -1], 6),                    # right sum, a negative size
    ((2, 6, 3), [6], 6),                     # 3-D g
    ((2, 6), [], 0),                         # no pieces
])
def test_split_bad_sizes_names_shape_and_sizes(shape, sizes, total):
    with pytest.raises(ShapeError, match="split_channels") as err:
        cpu.split_channels(np.zeros(shape), sizes)
    msg = str(err.value)
    assert str(shape) in msg and f"{sizes} (sum {total})" in msg


def test_split_sizes_must_be_ints():
    with pytest.raises(TypeError):
        cpu.split_channels(np.zeros((2, 4)), [2.0, 2.0])
