# rpuhw: `make run` and `make test` bootstrap .venv by themselves.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rpuhw-installed

.PHONY: run test lint bench readme parity clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# torch first (a plain `torch` requirement could pull a multi-GB CUDA build);
	@# skipped when the venv already has torch or when TORCH is set empty.
	$(BIN)/python -c "import torch" 2>/dev/null || { test -z "$(TORCH)" || $(BIN)/pip install "$(TORCH)"; }
	$(BIN)/pip install -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/rpuhw demo

# two workers (pytest-xdist), a test file per worker at a time so that a file's
# module-level fixtures are built once; TEST_WORKERS=0 runs in one process
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=20 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.update

# statistics of rpuhw vs aihwkit 1.2 for the same parameters (tests/test_parity_aihwkit.py), and
# the interchange: presets, round trips, export-model (tests/test_parity_presets.py);
# aihwkit runs in its own interpreter, built by the recipe in docs/performance.md
# ("aihwkit on this machine"); without it the tests skip and say so
AIHWKIT_PYTHON ?= /opt/aihwkit-venv/bin/python
parity: $(STAMP)
	@test -x $(AIHWKIT_PYTHON) || echo "no aihwkit at $(AIHWKIT_PYTHON): build it as docs/performance.md 'aihwkit on this machine' says, or set AIHWKIT_PYTHON (the parity tests skip)"
	RPUHW_AIHWKIT_PYTHON=$(AIHWKIT_PYTHON) $(BIN)/python -m pytest -q -m parity tests/test_parity_aihwkit.py tests/test_parity_presets.py

# run the README's tour as written and put its real outputs into README.md (a few minutes)
readme: $(STAMP)
	$(BIN)/python tools/readme_tour.py
	$(BIN)/python tools/readme_demo.py

clean:
	rm -rf $(VENV) build *.egg-info
