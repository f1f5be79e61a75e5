# kogpt2-serving developer entry points. `make help` lists them.
PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
STAMP       := $(VENV)/.installed
.DEFAULT_GOAL := help
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help install test lint wheel clean bench serve

# Container, packaging and AWS targets live beside the Dockerfiles.
-include docker/aws.mk

help:  ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

install: $(STAMP)  ## create .venv, install the package with pinned dev dependencies and a Java runtime

$(STAMP): setup.cfg constraints.txt requirements-dev.txt
	@command -v java >/dev/null 2>&1 || { \
	  echo "java not found: installing a headless JRE via apt (Multi Model Server needs it)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends default-jre-headless; }
	@[ -x $(PY) ] || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -c constraints.txt -r requirements-dev.txt
	@touch $(STAMP)

test: lint  ## run the whole test suite (what CI runs)
	$(VENV)/bin/hadolint docker/Dockerfile.cpu docker/Dockerfile.gpu
	$(PY) -m pytest -q

lint: install  ## fail on syntax or stdlib newer than Python 3.6 in the runtime package
	$(VENV)/bin/vermin --no-tips --violations -t=3.6- --backport dataclasses --eval-annotations src/

PORT        ?= 8080
serve: install  ## start the server on 127.0.0.1:$(PORT) (MODEL_DIR=... for your files; default: the shipped demo model)
	$(VENV)/bin/kogpt2-serving serve --host 127.0.0.1 --port $(PORT) $(if $(filter command line environment,$(origin MODEL_DIR)),--model-dir $(MODEL_DIR)) $(ARGS)

wheel: install  ## build dist/kogpt2_serving-*.whl
	rm -rf build dist
	$(PIP) wheel --no-deps -w dist .

# Benchmarks: ~10 min on 2 cores, on a quiet machine. QUICK=1 checks the pipeline in seconds
# per script and writes to benchmarks/results-quick/ (its README there), never the real report.
BENCH_OUT   := $(if $(QUICK),benchmarks/results-quick,benchmarks/results)
BENCH_FLAGS := $(if $(QUICK),--quick,)
BENCH_STAMP := $(VENV)/.bench-installed
COMMA       := ,

$(BENCH_STAMP): $(STAMP) setup.cfg constraints.txt
	$(PIP) install -q -c constraints.txt -e '.[bench]'
	@touch $(BENCH_STAMP)

bench: install $(BENCH_STAMP)  ## run the benchmark suite, write benchmarks/results/*.json and benchmarks/README.md
	@mkdir -p $(BENCH_OUT)
	$(PY) benchmarks/decode_latency.py $(BENCH_FLAGS) --output $(BENCH_OUT)/decode_latency.json
	$(PY) benchmarks/peers.py $(BENCH_FLAGS) --repeats $(if $(QUICK),1,3) --output $(BENCH_OUT)/peers.json
	$(PY) benchmarks/length_scaling.py $(BENCH_FLAGS) --output $(BENCH_OUT)/length_scaling.json
	$(PY) benchmarks/server_load.py --kogpt2-size $(if $(QUICK),--requests-per-client 1 --new-tokens 8 \
	  --concurrency 1$(COMMA)2,--requests-per-client 4) --output $(BENCH_OUT)/server_load.json
	$(PY) benchmarks/endpoint_latency.py --serve $(BENCH_FLAGS) $(if $(QUICK),,--calls 11) \
	  --output $(BENCH_OUT)/endpoint-local-w1.json
	$(PY) benchmarks/endpoint_latency.py --serve --workers 2 $(BENCH_FLAGS) $(if $(QUICK),,--calls 6) \
	  --output $(BENCH_OUT)/endpoint-local-w2.json
	$(PY) benchmarks/report.py --results $(BENCH_OUT) --output $(if $(QUICK),$(BENCH_OUT)/README.md,benchmarks/README.md)

clean:  ## remove build outputs (keeps .venv)
	rm -rf build dist src/*.egg-info .pytest_cache
