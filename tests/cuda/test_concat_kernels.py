"""Channel concatenation and split: CUDA kernels and backend vs the CPU reference.

Both are copies, so results must match exactly. Every output starts NaN, so
an element no launch writes (a wrong offset, a part copied short) fails.
Shapes cover 2-D (N, C) and 4-D (N, C, H, W), odd sizes, 1 to 4 parts and
parts of zero channels.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cudatest import big, check, examples, host, poison_fill, poisoned, rand, seeds
from gpudl.errors import ShapeError
from gpudl.kernels import concat as ck

DTYPES = st.sampled_from([np.float32, np.float64])


def exact(got, ref, what=""):
    try:
        check(got, ref, rtol=0, atol=0)
    except AssertionError as e:
        raise AssertionError(f"{what}: {e}") from None


@st.composite
def layouts(draw, min_c=1):
    """(batch, channel sizes, trailing (H, W) or ()) with tiny sizes."""
    rest = draw(st.sampled_from([(), (1, 1), None]))
    if rest is None:
        rest = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    sizes = draw(st.lists(st.integers(min_c, 4), min_size=1, max_size=4))
    return draw(st.integers(1, 3)), sizes, rest


def parts(seed, n, sizes, rest, dtype):
    return [rand(seed + i, (n, c) + rest, dtype) for i, c in enumerate(sizes)]


# ---- kernels, launched by hand ------------------------------------------------
@examples(25)
@given(layout=layouts(), seed=seeds, dtype=DTYPES)
def test_kernels(be, layout, seed, dtype):
    """A small fixed grid (2 blocks of 16) forces the grid-stride loop."""
    n, sizes, rest = layout
    xs = parts(seed, n, sizes, rest, dtype)
    ref = np.concatenate(xs, axis=1)
    s = int(np.prod(rest, dtype=np.int64))
    whole = be.asarray(poison_fill(ref.shape, dtype))
    c0 = 0
    for x in xs:
        be.launch(ck.concat_channels, 2, 16, be.asarray(x).reshape(n, -1),
                  whole.reshape(n, -1), c0 * s)
        c0 += x.shape[1]
    exact(host(be, whole), ref, "concat")
    src = be.asarray(ref)
    c0 = 0
    for x in xs:
        piece = be.asarray(poison_fill(x.shape, dtype))
        be.launch(ck.split_channels, 2, 16, src.reshape(n, -1), piece.reshape(n, -1), c0 * s)
        exact(host(be, piece), x, f"split at channel {c0}")
        c0 += x.shape[1]


# ---- through the backend ------------------------------------------------------
def run_backend(be, cpu, n, sizes, rest, seed, dtype):
    xs = parts(seed, n, sizes, rest, dtype)
    with poisoned(be):
        whole = be.concat_channels([be.asarray(x) for x in xs])
        got_whole = host(be, whole)
        pieces = be.split_channels(whole, sizes)
        whole[...] = 0  # pieces are new arrays, not views of g
    ref = cpu.concat_channels(xs)
    exact(ref, np.concatenate(xs, axis=1), "CPU concat")
    exact(got_whole, ref, "concat")
    assert len(pieces) == len(sizes)
    for i, (piece, x, r) in enumerate(zip(pieces, xs, cpu.split_channels(ref, sizes))):
        exact(host(be, piece), r, f"split piece {i}")
        exact(r, x, f"CPU split piece {i}")


@examples(40)
@given(layout=layouts(min_c=0), seed=seeds, dtype=DTYPES)
def test_backend(be, cpu, layout, seed, dtype):
    run_backend(be, cpu, *layout, seed, dtype)


EDGES = [
    (1, [1], ()),                       # one part, one element
    (3, [5, 2], ()),                    # dense (N, C)
    (2, [3, 1, 4, 2], (3, 5)),          # four parts, odd H, W
    (2, [0, 3, 0], (2, 3)),             # empty parts on both sides
    (1, [7, 9], (1, 1)),                # a dense batch as (N, C, 1, 1)
] + big(
    (64, [64, 128, 32, 32], (28, 28)),  # an inception block's four branches
    (32, [256, 256], (14, 14)),
    (512, [1000, 24], ()),
)


@pytest.mark.parametrize("n,sizes,rest", EDGES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backend_edges(be, cpu, n, sizes, rest, dtype):
    run_backend(be, cpu, n, sizes, rest, seed=n * 10 + len(sizes), dtype=dtype)


def test_mixed_dtypes_promote_like_numpy(be):
    xs = [rand(0, (2, 1, 2, 2), np.float32), rand(1, (2, 2, 2, 2), np.float64)]
    got = host(be, be.concat_channels([be.asarray(x) for x in xs]))
    exact(got, np.concatenate(xs, axis=1), "float32 + float64")


def test_non_contiguous_inputs(be):
    x = rand(0, (2, 3, 4, 5))
    y = rand(1, (2, 2, 5, 2))
    a = be.asarray(x)[:, :, ::2]  # strided views are copied before the launch
    b = be.asarray(y).transpose(0, 1, 3, 2)
    got = host(be, be.concat_channels([a, b]))
    exact(got, np.concatenate([x[:, :, ::2], y.transpose(0, 1, 3, 2)], axis=1))
    pieces = be.split_channels(be.asarray(x)[:, ::-1], [1, 2])
    exact(host(be, pieces[0]), x[:, 2:3])
    exact(host(be, pieces[1]), np.ascontiguousarray(x[:, 1::-1]))


def test_shape_errors(be):
    a = be.asarray(rand(0, (2, 3, 4, 4)))
    with pytest.raises(ShapeError, match=r"\(2, 3, 4, 4\), \(2, 3, 4, 5\)"):
        be.concat_channels([a, be.asarray(rand(1, (2, 3, 4, 5)))])
    with pytest.raises(ShapeError, match=r"\(2, 3, 4, 4\), \(2, 3\)"):
        be.concat_channels([a, be.asarray(rand(1, (2, 3)))])
    with pytest.raises(ShapeError, match=r"\[\]"):
        be.concat_channels([])
    with pytest.raises(ShapeError, match=r"\(2, 3, 4, 4\).*\[1, 1\] \(sum 2\)"):
        be.split_channels(a, [1, 1])
