# kogpt2-serving developer entry points. `make help` lists them.
PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
STAMP       := $(VENV)/.installed
.DEFAULT_GOAL := help
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help install test lint wheel clean

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

wheel: install  ## build dist/kogpt2_serving-*.whl
	rm -rf build dist
	$(PIP) wheel --no-deps -w dist .

clean:  ## remove build outputs (keeps .venv)
	rm -rf build dist src/*.egg-info .pytest_cache
