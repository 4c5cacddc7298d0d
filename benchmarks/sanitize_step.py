"""One short training run on the GPU, small enough for compute-sanitizer:
LeNet, one epoch over 64 digits (two steps of 32, then the evaluation).

CuPy's memory pool is switched off first, so every array is its own
cudaMalloc and memcheck sees a kernel that reads or writes past an array's
end (inside a pooled block it would land in another array, unseen).
Usage: compute-sanitizer --tool memcheck python -m benchmarks.sanitize_step
"""
import sys


def main(argv=None):
    import cupy
    cupy.cuda.set_allocator(None)
    cupy.cuda.set_pinned_memory_allocator(None)
    from gpudl.cli import main as gpudl_main
    return gpudl_main(["train", "--model", "lenet", "--device", "cuda", "--epochs", "1",
                       "--limit", "64", "--batch-size", "32", "--quiet", "--save", ""]
                      + list(argv or []))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
