# byzbench — two commands do all the set-up on a fresh machine:
#   make demo   runs the main job, `byzbench stress`, on the embedded default (creates .venv when missing)
#   make test   runs the test suite (creates .venv when missing)
# Also: make quick (stress --quick, about 2 min), make run (one experiment, a few seconds).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo quick run test test-fast bench venv clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/byzbench stress

quick: $(STAMP)
	$(BIN)/byzbench stress --quick --out stress-quick

run: $(STAMP)
	$(BIN)/byzbench run

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/round_throughput.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
