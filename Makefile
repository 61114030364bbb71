# carbonhook: `make sandbox` runs the service on its embedded defaults, `make test` runs the tests.
# Both create .venv/ (with the `carbonhook` command in it) on first use.

PYTHON ?= python3
# Only for creating .venv/: bench/run (which the tests call) reads PYTHON as the interpreter to
# run, and `make PYTHON=python3.12 test` must not hand it a bare one without the dependencies.
unexport PYTHON
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: sandbox test check lint bench bench-smoke soak lock clean

# Exactly the versions in constraints.txt (the ones last tested), so that a fresh clone installs
# what CI ran; `make lock` moves them to the newest that pyproject.toml allows.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
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

# A chaos soak of a few minutes (needs redis-server and PostgreSQL's binaries: it runs its own);
# exits non-zero unless every planned capture stands once and the ledger agrees. SOAK_ARGS adds
# options, e.g. `make soak SOAK_ARGS="--seed 2 --record"`.
SOAK_ARGS ?=
soak: $(STAMP)
	bench/soak --duration 180 $(SOAK_ARGS)

lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e '.[dev]'
	head -3 constraints.txt > constraints.new
	.venv-lock/bin/python -m pip freeze --exclude-editable >> constraints.new
	mv constraints.new constraints.txt
	rm -rf .venv-lock
	@echo "constraints.txt updated: run make test, then commit it"

clean:
	rm -rf $(VENV) .venv-* *.egg-info .pytest_cache .ruff_cache .mypy_cache
