# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install matchkit into it first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test bench clean swagger-ui

# Installs use constraints.txt: the exact versions the tests passed on.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.'
	touch $(STAMP)

# Tests also exercise CLIP (transformers + the CPU torch wheel), ONNX models and the
# HTTP API (serve), and Ray (a simulated cluster).
$(TEST_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,clip,onnx,serve,ray]'
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

# The interactive API docs (/api/docs) load Swagger UI from the package, not a CDN,
# so they work offline: this re-fetches the pinned swagger-ui-dist from the npm
# registry and keeps the files the page needs, with their licences.
SWAGGER_UI_VERSION := 5.35.0
SWAGGER_UI_DIR := matchkit/serve/static/swagger-ui
SWAGGER_UI_FILES := swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css \
	favicon-32x32.png LICENSE NOTICE

swagger-ui:
	rm -rf $(SWAGGER_UI_DIR).tmp && mkdir -p $(SWAGGER_UI_DIR).tmp
	cd $(SWAGGER_UI_DIR).tmp && npm pack --silent swagger-ui-dist@$(SWAGGER_UI_VERSION) >/dev/null \
		&& tar -xzf swagger-ui-dist-$(SWAGGER_UI_VERSION).tgz --strip-components=1 \
			$(addprefix package/,$(SWAGGER_UI_FILES)) \
		&& rm swagger-ui-dist-$(SWAGGER_UI_VERSION).tgz \
		&& sed -i '/^\/\/# sourceMappingURL=/d' swagger-ui-bundle.js \
		&& sed -i 's|/\*# sourceMappingURL=[^*]*\*/||' swagger-ui.css \
		&& echo "swagger-ui-dist $(SWAGGER_UI_VERSION) (npm), files: $(SWAGGER_UI_FILES)" > VERSION
	rm -rf $(SWAGGER_UI_DIR) && mv $(SWAGGER_UI_DIR).tmp $(SWAGGER_UI_DIR)
