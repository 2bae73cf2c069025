# pokediff: the two set-up commands (see README.md) and a few conveniences.
#   make pipeline   install, fetch the sprites, run the whole pipeline on a small CPU configuration
#   make compare    every pipeline run of this commit side by side: FID, KID and the params that change
#   make sweep      FID vs NFE for the trained model over a grid of samplers x steps
#   make test       install, run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1

# The small configuration of the main job (an overlay on params.yaml): a tiny U-Net and a few hundred
# steps/samples, so an idle 2-core CPU finishes the whole pipeline in about 14 minutes (README's set-up
# table: 13 min 50 s with nothing else running, 31 min 37 s beside a test run). On a GPU, `dvc repro` runs params.yaml as is.
SMALL_CONFIG := configs/cpu-small.yaml

.PHONY: install test pipeline compare sweep lint clean-outputs team-up team-down team-status team-check team-deploy team-worker team-crashed

$(BIN)/pokediff: pyproject.toml requirements/lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/lock.txt -e ".[dev,bench]"
	$(BIN)/python -m pipelines.plot_assets || echo "note: no vega scripts; dvc plots show draws no curves offline"
	touch $(BIN)/pokediff

install: $(BIN)/pokediff

# Two pytest workers: most of the slow tests wait on servers and subprocesses, so a 2-core machine runs
# two files at once (--dist loadfile keeps a file's module fixtures, e.g. its servers, on one worker).
# TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -q --timeout=1200 -n $(TEST_WORKERS) --dist loadfile --durations=15

# params.yaml is not changed: the run is a DVC experiment (`dvc exp show`), and afterwards only
# dvc.lock and outputs/ differ.
SMALL_ARGS := --params-file $(SMALL_CONFIG)

pipeline: install
	$(BIN)/python -m pipelines.flows $(SMALL_ARGS)

# Every run of this commit is a DVC experiment; `dvc exp show` lists them but, with every metric and param
# as a column, hides FID behind "..." in 120 columns. This keeps the experiment's name, FID, KID and the
# params a run usually changes (other columns: make compare COMPARE_KEEP='fid|final_loss|diffusion\.schedule').
# The first row is the commit itself, which carries no run (`!`): runs are experiments beside it.
COMPARE_KEEP ?= fid|kid_mean|train\.steps|sample\.sampler|sample\.steps

# Piped or logged (not a terminal), DVC's table would be cut at 80 columns: it gets 160 unless COLUMNS says.
compare: install
	@test -t 1 || export COLUMNS=$${COLUMNS:-160}; \
	$(BIN)/dvc exp show --no-pager --hide-workspace --drop '.*' --keep '^(Experiment|$(COMPARE_KEEP))$$'

# FID against NFE for the model `make pipeline` trained: ddim 10/25/50, dpmpp2m 10/20, 100 images each
# (20.5 min measured on a 2-core CPU shared with other jobs, load 7-13; the DVC experiments run sample+score)
sweep: install
	$(BIN)/python -m pipelines.sweep $(SMALL_ARGS) --num-images 100

lint: install
	$(BIN)/ruff check src tests benchmarks pipelines

clean-outputs:
	rm -rf outputs

# ---- On a team (docs/team.md): the team's servers on this machine, and this machine as a team member.
# Every target reads this machine's team settings the same way: the environment, then team.env.
TEAM := $(BIN)/python -m pokediff.team
POOL ?= pokediff-team

team-up: install        # PostgreSQL + MLflow (login, proxied artifacts) + Prefect (auth) + remotes, state in .team/
	$(TEAM) stack up

team-down:              # stop them (the state stays in .team/); without a .venv nothing can be running
	@if test -x $(BIN)/python; then $(TEAM) stack down; else echo "team stack: nothing was running"; fi

team-status:
	$(TEAM) stack status

team-check: install     # this machine's settings (no secrets shown) and each server's login
	$(TEAM) check

team-deploy: install    # deploy HEAD (pushed to the team's git remote) to the team's Prefect server
	$(TEAM) deploy

team-crashed: install   # a flow run whose worker died -> Crashed, freeing its slot (make team-crashed RUN=<id>)
	$(TEAM) mark-crashed $(RUN)

team-worker: install    # a worker on this host for the pool (make team-worker POOL=gpu-pool)
	$(TEAM) worker --pool $(POOL)
