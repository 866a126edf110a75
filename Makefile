# Two commands: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,onnx,art,ray,tensorboard,mlflow,wasm]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lenetlab train --preset fast --out runs/demo --force
	$(BIN)/lenetlab info runs/demo

# Three pytest-xdist workers (one torch thread each) on the 2-core machine: the tests often wait (a browser, a
# compiler, a CLI subprocess, a shared fixture another worker is building), and the third worker fills those
# gaps (measured: 2 workers 3 min 48 s, 3 workers 2 min 24 s, same commit). A file's tests stay on one worker.
TEST_WORKERS ?= 3

# Idle OpenMP threads sleep instead of spinning (tests/conftest.py says why); numbers do not change.
test: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile

# The long, faithful runs (full-data models, full test sets): CI runs them after `make test`.
test-slow: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -m slow -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# Every benchmark in one run; the ratios and goals they measured go to benchmarks/results.json (format: the
# docstring of benchmarks/run_all.py). `run_all.py --only NAME,NAME` / `--quick` for a part / a smoke run.
bench: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
