"""benchmarks/gemm_precision.py measures nothing without a GPU, and says so."""
import subprocess
import sys
from pathlib import Path

import pytest

from gpudl.backend import gpu_available


@pytest.mark.skipif(gpu_available(), reason="a GPU is present: the benchmark would run")
def test_refuses_without_gpu():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gemm_precision", "--sizes", "64"],
                          cwd=Path(__file__).parent.parent, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "needs an NVIDIA GPU" in proc.stderr and "nothing was measured" in proc.stderr
