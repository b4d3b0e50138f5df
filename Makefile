# The two commands: `make run` and `make test`. Each does all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean fuzz dist-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/aimc reproduce --out results/reproduce
	$(BIN)/aimc mvm-error --json-out results/mvm_error.json --plot results/mvm_error.png

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

# The long fuzz run of the file loaders and input checks (make test runs about 100 inputs per target).
FUZZ_EXAMPLES ?= 10000
fuzz: $(STAMP)
	AIMC_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/test_fuzz.py --durations=20

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py
	$(BIN)/python benchmarks/bench_resnet9.py
	$(BIN)/python benchmarks/bench_perf.py

# Build the wheel and sdist offline, check their contents, install the wheel into a fresh venv and run aimc
# from outside the repository; the checked files are left in dist/.
dist-check: $(STAMP)
	AIMC_DIST_DIR=dist $(BIN)/python -m pytest -q tests/test_wheel.py

clean:
	rm -rf $(VENV) results .pytest_cache
