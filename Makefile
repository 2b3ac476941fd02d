# Set-up and entry points. `make reproduce` and `make test` create the pinned environment when absent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
export PATH := $(abspath $(BIN)):$(PATH)
# Runs are offline: weights come from local folders the workflow builds, never from a hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg

# Without a CUDA device the GPU-tagged rules train on the CPU: small models gain little from a second thread and
# each job spends seconds single-threaded importing torch, so run one thread per job, as many jobs as cores
# (the profile's gpu: 1 slot would serialise them). With a GPU the profile's settings apply unchanged.
CPU_ONLY := $(if $(shell command -v nvidia-smi 2>/dev/null),,yes)
SNAKEMAKE_FLAGS ?= $(if $(CPU_ONLY),--max-threads 1 --resources gpu=$(shell nproc))
# Every run writes under results/<run>/ (logs/<run>/, benchmarks/<run>/), <run> being its config's `run:`:
# `make report` / `make publish` act on the run of CONFIG, e.g. `make report CONFIG=configs/smoke.yaml`.
CONFIG ?=
RUN = $(or $(shell $(BIN)/python -m cxrgen.runs $(CONFIG)),$(error cannot read the run name of config.yaml $(CONFIG)))
CONFIG_FLAGS = $(if $(CONFIG),--configfile $(CONFIG))

.PHONY: env reproduce showcase smoke test test-fast lint format dryrun report publish clean rehearse

env: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch and torchvision first (a local CUDA build that runs on the CPU), then the rest of the lock
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# CONFIG=configs/<name>.yaml runs that config (merged over config.yaml) instead of the default
reproduce: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_FLAGS) $(CONFIG_FLAGS)
	$(BIN)/snakemake --report results/$(RUN)/report.html $(CONFIG_FLAGS)

# the default with the power and budgets its findings need (configs/showcase.yaml; README "Showcase")
showcase:
	$(MAKE) reproduce CONFIG=configs/showcase.yaml

# every rule at toy size (results apart from the default's, under results/smoke/)
smoke: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_FLAGS) --configfile configs/smoke.yaml

# The four paper configs end to end with their real architectures at full size (random weights built from the
# published configs), 2 optimizer steps per trainer, on the CPU: configs/rehearsal/<paper>.yaml over
# configs/<paper>.yaml, each in rehearsal/<paper>/; per-stage table in rehearsal/table.{csv,md}. One full-size job at
# a time (peak ~21 GB: Cheff's report SDM); not part of `make test`. One paper: make rehearse REHEARSE_FLAGS="--paper zafar2023"
REHEARSE_FLAGS ?=
rehearse: $(STAMP)
	$(BIN)/python -m cxrgen.rehearsal $(REHEARSE_FLAGS)

# pytest-xdist: TEST_WORKERS processes share the tests (the SLURM tests stay on one: --dist loadgroup). Many tests
# wait on subprocesses (Snakemake, SLURM polling, 2-process launches), so 2 workers keep 2 cores busy
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test: $(STAMP) lint dryrun
	$(PYTEST) --durations=15

# the unit tests: everything but the tests marked slow (pyproject.toml: workflow runs, SLURM, DVC, multi-process DDP,
# preemption, and tests that start a process or train a model end to end)
test-fast: $(STAMP)
	$(PYTEST) -m "not slow" --durations=10

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint

# apply snakefmt's formatting (settings in pyproject.toml); `make lint` fails on unformatted rules
format: $(STAMP)
	$(BIN)/snakefmt Snakefile rules

dryrun: $(STAMP)
	$(BIN)/snakemake -n --quiet rules
	$(BIN)/snakemake -n --quiet rules --configfile configs/smoke.yaml
	$(BIN)/snakemake -n --quiet rules --configfile configs/showcase.yaml

report: $(STAMP)
	$(BIN)/snakemake --report results/$(RUN)/report.html $(CONFIG_FLAGS)

# Version finished results with DVC (Snakemake stays the only orchestrator: no dvc.yaml). Each entry of the
# run's folder results/<run>/ becomes one artefact (results/default/models.dvc, results/default/tables.dvc, ...),
# pushed to the default remote of .dvc/config (override it, with credentials, in .dvc/config.local). Another run:
# `make publish CONFIG=configs/smoke.yaml`. Restore elsewhere with
#   git pull && dvc pull && snakemake --touch --cores 1 [--configfile ...]   (then nothing reruns)
# Publish a subset with e.g. `make publish PUBLISH="results/default/models results/default/tables"`.
PUBLISH ?= $(sort $(filter-out %.dvc,$(wildcard results/$(RUN)/*)))
publish: $(STAMP)
	@test -n "$(strip $(PUBLISH))" || { echo "make publish: nothing under results/$(RUN)/; run the workflow first" >&2; exit 1; }
	$(BIN)/dvc add $(PUBLISH)
	$(BIN)/dvc push $(addsuffix .dvc,$(PUBLISH))
	@echo "published $(PUBLISH); commit the pointers: git add $(addsuffix .dvc,$(PUBLISH))"

clean:
	rm -rf results logs benchmarks .snakemake
