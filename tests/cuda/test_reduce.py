"""Column sums, full sums and row argmax: CUDA kernels vs the CPU reference."""
import numpy as np
import pytest
from hypothesis import given

from cudatest import big, check, dims, examples, host, poison_fill, poisoned, rand, seeds
from gpudl.kernels import reduce as rk


@examples(8)
@given(n=dims(40), f=dims(40), seed=seeds)
def test_sum_rows(be, cpu, n, f, seed):
    g = rand(seed, (n, f))
    with poisoned(be):
        got = be.sum_rows(be.asarray(g))
    check(host(be, got), cpu.sum_rows(g), rtol=1e-5, atol=1e-5 * np.sqrt(n))


@pytest.mark.parametrize("n,f", [(1, 1), (1, 33), (40, 1), (130, 3)]
                         + big((100_000, 10), (1024, 1030), (7, 100_000)))
def test_sum_rows_edges(be, cpu, n, f):
    g = rand(n + f, (n, f))
    with poisoned(be):
        got = be.sum_rows(be.asarray(g))
    check(host(be, got), cpu.sum_rows(g), rtol=1e-5, atol=1e-5 * np.sqrt(n))


@pytest.mark.parametrize("blocks_y", [1, 3])
def test_sum_rows_two_pass(be, cpu, blocks_y):
    """Launched directly, forcing several row-slices per column strip."""
    n, f = 37, 35  # two column strips, 37 rows over blocks_y * SY strands
    g = rand(5, (n, f))
    partial = be.asarray(poison_fill((blocks_y, f), np.float32))
    out = be.asarray(poison_fill((f,), np.float32))
    bx = -(-f // rk.SX)
    be.launch(rk.sum_rows_partial, (bx, blocks_y), (rk.SX, rk.SY), be.asarray(g), partial)
    be.launch(rk.sum_rows_naive, 1, 64, partial, out)
    check(host(be, out), cpu.sum_rows(g), rtol=1e-5, atol=1e-5 * np.sqrt(n))


@pytest.mark.parametrize("n,blocks", [(1, 1), (300, 1), (1000, 3)] + big((1 << 22, 528)))
def test_sum_1d(be, cpu, n, blocks):
    x = rand(n, (n,))
    partial = be.asarray(poison_fill((blocks,), np.float32))
    out = be.asarray(poison_fill((1,), np.float32))
    be.launch(rk.sum_1d, blocks, rk.SUM_THREADS, be.asarray(x), partial)
    be.launch(rk.sum_1d, 1, rk.SUM_THREADS, partial, out)
    check(host(be, out), np.array([x.sum()], np.float32), rtol=1e-5, atol=1e-5 * np.sqrt(n))


@examples(6)
@given(n=dims(20), c=dims(40), seed=seeds)
def test_argmax_rows(be, cpu, n, c, seed):
    x = rand(seed, (n, c))
    with poisoned(be):
        got = be.argmax_rows(be.asarray(x))
    check(host(be, got), cpu.argmax_rows(x), rtol=0, atol=0)


def test_argmax_rows_ties_nan_inf(be, cpu):
    """First maximum wins ties; the first NaN wins over everything (NumPy's rule)."""
    c = 70  # more than one stride of RX threads per row
    x = np.zeros((9, c), np.float32) - 1
    x[0, [3, 40]] = 5           # tie across threads: lower index
    x[1, [40, 3]] = [5, 4]
    x[2, [50, 10, 60]] = np.nan  # first NaN
    x[3, 69] = np.inf           # last column
    x[4, :] = -np.inf           # all -inf: index 0
    x[5, 0] = 2                 # first column
    x[6, [33, 1]] = [np.nan, np.inf]
    x[7, [31, 32]] = 3          # tie at the tree's split point
    x[8, :] = 7                 # all equal
    with poisoned(be):
        got = be.argmax_rows(be.asarray(x))
    check(host(be, got), cpu.argmax_rows(x), rtol=0, atol=0)


@pytest.mark.parametrize("n,c", [(1, 1), (17, 1), (1, 33)] + big((4096, 1000), (100_000, 10)))
def test_argmax_rows_edges(be, cpu, n, c):
    x = rand(n * c, (n, c))
    with poisoned(be):
        got = be.argmax_rows(be.asarray(x))
    check(host(be, got), cpu.argmax_rows(x), rtol=0, atol=0)
