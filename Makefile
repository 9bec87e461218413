# Every target installs what it needs first; a fresh clone needs nothing else.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.distrec-installed
EXTRAS ?= cpu,dev,text
PIPQ   := $(PIP) install -q --disable-pip-version-check

.PHONY: setup test test-all smoke data clean-venv

setup: $(STAMP)

# Re-runs only when the dependency pins change (idempotent).
$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIPQ) "torch==2.13.0" setuptools wheel ninja
	DS_BUILD_OPS=0 $(PIPQ) -c constraints.txt --no-build-isolation "deepspeed==0.19.8"
	$(PIPQ) -c constraints.txt --no-build-isolation -e ".[$(EXTRAS)]"
	$(PIP) check
	touch $(STAMP)

# A cold start every time: the suite gets a fresh, empty DISTREC_HOME (fetched data, converted
# models, prepared data), so a warm cache can never hide a missing step. pip's cache stays.
test: setup
	$(VENV)/bin/ruff check --select F distrec tests jobs
	$(VENV)/bin/lint-imports
	$(VENV)/bin/vulture distrec jobs vulture_whitelist.py --min-confidence 60
	home=$$(mktemp -d -t distrec-test-home.XXXXXX) && trap 'rm -rf "$$home"' EXIT && \
	  DISTREC_HOME=$$home DISTREC_TEST_HOME=$$home $(PY) -m pytest -q -p no:cacheprovider --durations=30

test-all: setup
	$(PY) -m pytest -q -p no:cacheprovider -m ""

data: setup
	$(VENV)/bin/distrec data fetch ml-100k
	$(VENV)/bin/distrec data fetch smollm2

smoke: data
	$(VENV)/bin/distrec train --config jobs/smoke.yaml

clean-venv:
	rm -rf $(VENV)

# What a lent GPU machine lacks for jobs/gpu/oneshot.sh (jobs/gpu/README.md), into the ignored
# .gpu_pack/: cp312 Ray/DeepSpeed/faiss, ML-100K, a 1B model folder. Fails at >= 64 MiB with the repo.
.PHONY: gpu-pack
gpu-pack: setup
	$(PY) jobs/gpu/pack.py build
