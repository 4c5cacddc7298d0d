# The two commands of the README: `make train` and `make test`. Each builds the
# virtual environment on first use, so both work from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On a machine with an NVIDIA driver, also install CuPy so `make train` uses the GPU.
GPU_EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo ",cuda12")
STAMP := $(VENV)/.installed$(GPU_EXTRA)
# PyTorch's CPU build, for the tests that cross-check gpudl against it (interop,
# layers, optimizers). 2.13.0 is the CPU wheel this project's machines hold on
# disk; elsewhere PyPI's torch is a CUDA build of several GB, so point pip at the
# CPU index: make test TORCH_PIP="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP ?= torch==2.13.0
PYTEST_FLAGS ?= -q -ra

.PHONY: install train test test-cpu test-sim kernels-report wheel-check bench gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIP)
	$(PY) -m pip install -q -e ".[test,data$(GPU_EXTRA)]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(VENV)/bin/gpudl train $(ARGS)

# Two pytest runs: numba reads NUMBA_ENABLE_CUDASIM once, at import. Both are
# spread over every core with pytest-xdist: the CPU run by module (loadscope:
# a module's compile-once fixtures stay on one worker), the simulator, which
# runs each CUDA thread as Python, test by test.
test: test-cpu test-sim

test-cpu: $(STAMP)
	$(PY) -m pytest $(PYTEST_FLAGS) -n auto --dist loadscope tests

test-sim: $(STAMP)
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest $(PYTEST_FLAGS) -n auto tests/cuda

kernels-report: $(STAMP)
	$(PY) -m gpudl.kernels.catalog

# Build the wheel, install it in a fresh venv and import gpudl.kernels from outside the repo.
wheel-check: $(STAMP)
	rm -rf dist && $(PY) -m pip wheel -q --no-deps -w dist .
	rm -rf $(VENV)-wheel && $(PYTHON) -m venv $(VENV)-wheel
	$(VENV)-wheel/bin/pip install -q dist/gpudl-*.whl
	cd / && $(CURDIR)/$(VENV)-wheel/bin/python -c "import gpudl, gpudl.kernels, gpudl.kernels.matmul, gpudl.demos.perceptron; print('wheel ok:', gpudl.__file__)"
	$(VENV)-wheel/bin/gpudl info --device cpu

# The benchmark suite on the current device (ARGS="--groups gemm memory", "--quick", ...).
bench: $(STAMP)
	$(PY) -m benchmarks $(ARGS)

gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) $(VENV)-wheel dist build *.egg-info .pytest_cache .hypothesis
