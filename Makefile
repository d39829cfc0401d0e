# Two entry points for a fresh machine (see README): `make profile` and `make test`.
# Both create .venv, install modelsize into it, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and only when the venv has none, so an existing build is kept. 2.14.1 with
# torchvision 0.29.1: the pair installs together (timm, in the test extra, imports torchvision; PyPI's
# torchvision 0.28 does not load beside the CPU build of torch 2.13). A CUDA build that runs on the CPU.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup setup-test profile test bench gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

setup: $(BIN)/python
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e .

setup-test: setup
	$(BIN)/python -m pip install --quiet -e ".[test]"

profile: setup
	$(BIN)/modelsize profile $(ARGS)

# The suite on two pytest-xdist workers, one per core of the 2-CPU machine it is sized for; a test
# file's tests stay on one worker (--dist loadfile), so its module fixtures are measured once.
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test: setup-test
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

bench: setup-test
	$(BIN)/python -m pytest benchmarks -q $(ARGS)

# On a CUDA machine that already has torch (any CUDA build), psutil, PyYAML, nvidia-ml-py, numpy, pytest
# (timm and transformers optional; Keras not needed): installs modelsize into $(PYTHON) itself, without
# dependencies or the network (no venv), then runs the CUDA tests, the zoo on the GPU, fit --verify and
# the time check, and writes results/accuracy_cuda.md and .json (under 8 minutes). Without a GPU:
# make gpu-check ARGS="--device cpu" (writes results/gpu_check_cpu/accuracy_cpu.*). The install needs
# setuptools>=68 in $(PYTHON) (no build isolation: nothing is downloaded); a failed install is
# reported and the check still runs from the checkout.
gpu-check:
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e . \
		|| echo "gpu-check: pip install failed; running from the checkout"
	$(PYTHON) benchmarks/gpu_check.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
