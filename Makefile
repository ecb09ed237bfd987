# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the whole suite).
# Each creates .venv and installs what it needs. torch==2.13.0 (CPU) is installed only when the venv's
# python cannot import torch; GPU hosts set TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url ...")
# or pre-install torch and create the venv with SYSTEM_SITE_PACKAGES=1.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
SYSTEM_SITE_PACKAGES ?= 0
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
VENV_FLAGS := $(if $(filter 1,$(SYSTEM_SITE_PACKAGES)),--system-site-packages,)

.PHONY: venv demo serve test test-deps lint typecheck protos check-protos check-deploy bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[server,plot,dev]"
	touch $(STAMP)

venv: $(STAMP)

# The main job: trains on a built-in corpus with both services started in-process, writes ./chargpt-report/.
# Pass flags through DEMO_ARGS, e.g. make demo DEMO_ARGS="--corpus python --minutes 5".
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/chargpt demo $(DEMO_ARGS)

serve: $(STAMP)
	$(BIN)/chargpt-trainer & $(BIN)/chargpt-inference --http-port 8000 --trainer-address 127.0.0.1:50051 & wait

# The whole suite. Every non-GPU skip is listed at its end, and fails the run in CI (tests/support/skip_policy.py).
test: $(STAMP) test-deps check-protos lint typecheck check-deploy
	$(PY) -m pytest -q

# System packages the suite needs (Prometheus, Slurm): installed where apt-get may run, else a warning naming them.
test-deps:
	bash scripts/install-test-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy chargpt client/chargpt_client launchers inference_service trainer_service

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

check-protos: $(STAMP)
	$(PY) scripts/gen_protos.py --check

# Dockerfiles, Compose, Kubernetes, Prometheus and Grafana configuration (see deploy/README.md).
check-deploy: $(STAMP)
	$(PY) -m deploy.tools.check

bench: $(STAMP)
	$(PY) -m bench.train_throughput
	$(PY) -m bench.inference

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
