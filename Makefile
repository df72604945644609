# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install matchkit into it first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test bench clean

# Installs use constraints.txt: the exact versions the tests passed on.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.'
	touch $(STAMP)

# Tests also exercise CLIP (transformers + the CPU torch wheel), ONNX models and the
# HTTP API (serve).
$(TEST_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,clip,onnx,serve]'
	touch $(TEST_STAMP)

demo: $(STAMP)
	mkdir -p out
	$(BIN)/matchkit dedupe examples/images --json out/demo.json --csv out/demo.csv
	@echo "wrote out/demo.json and out/demo.csv"

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_throughput.py
	$(BIN)/python benchmarks/bench_dedupe.py --set transformed

clean:
	rm -rf $(VENV) out benchmarks/_work
