"""numba.cuda kernels, one module per op family (shipped as gpudl.kernels)."""
