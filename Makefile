# kogpt2-serving developer entry points. `make help` lists them.
PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
STAMP       := $(VENV)/.installed
# The MXNet the images ship (1.6, MKL-DNN build): a second venv for the test matrix's third leg.
VENV16      ?= .venv16
PY16        := $(VENV16)/bin/python
STAMP16     := $(VENV16)/.installed
# Python 3.6 (the MXNet 1.6 images' Python) with the aiohttp pinned for it: the native
# frontend's check runs there (tests/test_native_compat.py). Built where an interpreter exists.
VENV36      ?= .venv36
PY36_BASE   := $(firstword $(shell command -v python3.6 2>/dev/null) $(wildcard $(HOME)/.pyenv/versions/3.6*/bin/python))
STAMP36     := $(VENV36)/.installed
.DEFAULT_GOAL := help
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help install test lint wheel clean bench serve

# Container, packaging and AWS targets live beside the Dockerfiles.
-include docker/aws.mk

help:  ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

install: $(STAMP) $(STAMP16) $(STAMP36)  ## create .venv (pinned dev dependencies, a Java runtime), .venv16 (MXNet 1.6), .venv36

$(STAMP): setup.cfg constraints.txt requirements-dev.txt
	@command -v java >/dev/null 2>&1 || { \
	  echo "java not found: installing a headless JRE via apt (Multi Model Server needs it)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends default-jre-headless; }
	@[ -x $(PY) ] || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -c constraints.txt -r requirements-dev.txt
	@touch $(STAMP)

# Only what the MXNet 1.6 leg imports; the package with --no-deps, so nothing pulls MXNet 1.9.
$(STAMP16): setup.cfg constraints-mxnet16.txt requirements-mxnet16.txt
	@[ -x $(PY16) ] || { echo "creating $(VENV16) (mxnet-mkl 1.6.0, the images' MXNet, for make test)"; \
	  $(PYTHON) -m venv $(VENV16); }
	$(PY16) -m pip install -q --upgrade pip setuptools wheel
	$(PY16) -m pip install -q -c constraints-mxnet16.txt -r requirements-mxnet16.txt
	$(PY16) -m pip install -q --no-deps -e .
	@touch $(STAMP16)

$(STAMP36): constraints-py36.txt
	@if [ -z "$(PY36_BASE)" ]; then \
	  echo "no Python 3.6 interpreter: $(VENV36) not built (the native frontend's Python 3.6 check is skipped)"; \
	else \
	  [ -x $(VENV36)/bin/python ] || { echo "creating $(VENV36) (Python 3.6, aiohttp 3.8.6)"; \
	    PYENV_VERSION=3.6.15 $(PY36_BASE) -m venv $(VENV36); }; \
	  $(VENV36)/bin/python -m pip install -q -c constraints-py36.txt pip && \
	  $(VENV36)/bin/python -m pip install -q -c constraints-py36.txt aiohttp sentencepiece numpy dataclasses && \
	  touch $(STAMP36); \
	fi

# The runtime matrix (what CI runs), most specific legs first so that the whole suite's pytest
# summary stays the closing line; any failing leg fails `make test`:
#   avx2     the tests whose kernels differ by CPU class, with oneDNN capped at AVX2 (the AMD
#            EPYC / no-AVX-512 class: no bfloat16 products, other kernels per shape)
#   mxnet16  engine, checkpoint, decoding and handler tests under mxnet-mkl 1.6.0 (the images'
#            MXNet: no bfloat16 type); tests marked `serves` need MMS, which .venv16 lacks
#   suite    every test, MXNet 1.9.1, this CPU's own kernels
AVX2_TESTS    := tests/test_engine.py tests/test_handler.py tests/test_server.py tests/test_server_modes.py \
                 tests/test_bfloat16.py tests/test_capabilities.py tests/test_scheduler.py tests/test_kernels.py tests/test_int8.py
MXNET16_TESTS := tests/test_engine.py tests/test_checkpoint.py tests/test_model_reference.py tests/test_bfloat16.py \
                 tests/test_capabilities.py tests/test_beam_search.py tests/test_sampling.py tests/test_processors.py \
                 tests/test_stopping.py tests/test_params.py tests/test_tokenizer.py tests/test_handler.py \
                 tests/test_demo_model.py tests/test_scheduler.py tests/test_tgi.py tests/test_kernels.py tests/test_int8.py
MATRIX        := .test-matrix.txt

test: lint $(STAMP16) $(STAMP36)  ## run the test matrix: AVX2-capped and MXNet 1.6 legs, then the whole suite (what CI runs)
	$(VENV)/bin/hadolint docker/Dockerfile.cpu docker/Dockerfile.gpu
	@rm -f $(MATRIX); failed=""; \
	scripts/test_leg.sh $(MATRIX) "avx2 (DNNL_MAX_CPU_ISA=AVX2, MXNet 1.9.1)" \
	  env DNNL_MAX_CPU_ISA=AVX2 $(PY) -m pytest -q $(AVX2_TESTS) || failed="$$failed avx2"; \
	scripts/test_leg.sh $(MATRIX) "mxnet16 (mxnet-mkl 1.6.0)" \
	  $(PY16) -m pytest -q -m "not serves" $(MXNET16_TESTS) || failed="$$failed mxnet16"; \
	echo "==== runtime matrix so far"; cat $(MATRIX); \
	scripts/test_leg.sh $(MATRIX) "suite (MXNet 1.9.1, this CPU's kernels)" $(PY) -m pytest -q || failed="$$failed suite"; \
	if [ -n "$$failed" ]; then echo "==== runtime matrix"; cat $(MATRIX); echo "error: failing leg(s):$$failed"; exit 1; fi

lint: $(STAMP)  ## fail on syntax or stdlib newer than Python 3.6 in the runtime package
	$(VENV)/bin/vermin --no-tips --violations -t=3.6- --backport dataclasses --eval-annotations src/

PORT        ?= 8080
serve: $(STAMP)  ## start the server on 127.0.0.1:$(PORT) (MODEL_DIR=... for your files; default: the shipped demo model)
	$(VENV)/bin/kogpt2-serving serve --host 127.0.0.1 --port $(PORT) $(if $(filter command line environment,$(origin MODEL_DIR)),--model-dir $(MODEL_DIR)) $(ARGS)

wheel: $(STAMP)  ## build dist/kogpt2_serving-*.whl
	rm -rf build dist
	$(PIP) wheel --no-deps -w dist .

# Benchmarks: ~10 min on 2 cores, on a quiet machine. QUICK=1 checks the pipeline in seconds
# per script and writes to benchmarks/results-quick/ (its README there), never the real report.
# ISA=AVX2 (or AVX512_CORE, AVX512_CORE_VNNI; default $DNNL_MAX_CPU_ISA) runs as that CPU
# class and writes to a subdirectory named after it (benchmarks/results/avx2/): the report shows
# every class measured side by side. Variants a CPU or MXNet cannot run are skipped and listed.
ISA         ?= $(DNNL_MAX_CPU_ISA)
ISA_CAP     := $(shell echo '$(ISA)' | tr a-z A-Z)
BENCH_BASE  := $(if $(QUICK),benchmarks/results-quick,benchmarks/results)
BENCH_OUT   := $(BENCH_BASE)$(if $(ISA),/$(shell echo '$(ISA)' | tr A-Z a-z))
BENCH_FLAGS := $(if $(QUICK),--quick,)
# A class below AMX is shown to every library, ONNX Runtime included (it reads no cap), through
# benchmarks/as_cpu.py: CPUID answers without the features above it.
BENCH_ENV   := $(if $(ISA),$(if $(findstring AMX,$(ISA_CAP)),,$(PY) benchmarks/as_cpu.py $(ISA_CAP)) env DNNL_MAX_CPU_ISA=$(ISA_CAP))
BENCH_STAMP := $(VENV)/.bench-installed
COMMA       := ,

$(BENCH_STAMP): $(STAMP) setup.cfg constraints.txt
	$(PIP) install -q -c constraints.txt -e '.[bench]'
	@touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)  ## run the benchmarks (ISA=AVX2: as that CPU class), write benchmarks/results/ and benchmarks/README.md
	@mkdir -p $(BENCH_OUT)
	$(BENCH_ENV) $(PY) benchmarks/decode_latency.py $(BENCH_FLAGS) --output $(BENCH_OUT)/decode_latency.json
	$(BENCH_ENV) $(PY) benchmarks/peers.py $(BENCH_FLAGS) --repeats $(if $(QUICK),1,3) --output $(BENCH_OUT)/peers.json
	$(BENCH_ENV) $(PY) benchmarks/length_scaling.py $(BENCH_FLAGS) --output $(BENCH_OUT)/length_scaling.json
	$(BENCH_ENV) $(PY) benchmarks/server_load.py --kogpt2-size $(if $(QUICK),--requests-per-client 1 --new-tokens 4-8 \
	  --concurrency 1$(COMMA)2,--requests-per-client 2) --output $(BENCH_OUT)/server_load.json
	$(BENCH_ENV) $(PY) benchmarks/endpoint_latency.py --serve $(BENCH_FLAGS) $(if $(QUICK),,--calls 11) \
	  --output $(BENCH_OUT)/endpoint-local-w1.json
	$(BENCH_ENV) $(PY) benchmarks/endpoint_latency.py --serve --workers 2 $(BENCH_FLAGS) $(if $(QUICK),,--calls 6) \
	  --output $(BENCH_OUT)/endpoint-local-w2.json
	$(BENCH_ENV) $(PY) benchmarks/gateway_overhead.py $(BENCH_FLAGS) --output $(BENCH_OUT)/gateway_overhead.json
	$(PY) benchmarks/report.py --results $(BENCH_BASE) --output $(if $(QUICK),$(BENCH_BASE)/README.md,benchmarks/README.md)

clean:  ## remove build outputs (keeps .venv, .venv16 and .venv36)
	rm -rf build dist src/*.egg-info .pytest_cache $(MATRIX)
