# carbonhook: `make sandbox` runs the service on its embedded defaults, `make test` runs the tests.
# Both create .venv/ (with the `carbonhook` command in it) on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: sandbox test check lint bench bench-smoke clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

sandbox: $(STAMP)
	$(BIN)/carbonhook run --sandbox

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check receiver workers carbonhook tests migrations bench
	$(BIN)/ruff format --check receiver workers carbonhook migrations
	$(BIN)/mypy

check: lint test

bench: $(STAMP)
	bench/run

bench-smoke: $(STAMP)
	bench/run --smoke

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .mypy_cache
