# The two set-up commands of the README. Both create .venv if needed (torch==2.13.0 CPU build first, so pip
# never pulls a multi-GB CUDA build), then run the main job or the full test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: quickstart test install install-dev install-llamacpp

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install --quiet -e '.[text,serve]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install --quiet -e '.[dev]'
	touch $@

# llama-cpp-python compiles llama.cpp (no wheel on PyPI for this platform); without its multimodal library (unused
# here) the build is about a third shorter. `make test` runs the llama.cpp tests only where this was done.
$(VENV)/.installed-llamacpp: $(VENV)/.installed-dev
	CMAKE_ARGS="$${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" CMAKE_BUILD_PARALLEL_LEVEL="$$(nproc)" \
		$(PIP) install --quiet -e '.[llamacpp]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev
install-llamacpp: $(VENV)/.installed-llamacpp

quickstart: install
	$(VENV)/bin/temarec quickstart --out runs/quickstart

test: install-dev
	$(VENV)/bin/python -m pytest -q
