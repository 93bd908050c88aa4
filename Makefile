# Two entry points for a fresh machine: `make demo` (main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: venv demo test lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the pinned CPU build first, so the `torch>=2.3` range is already satisfied
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev,export]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/hetq demo --out runs/demo

test: venv
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info .pytest_cache
