# The two set-up commands of the README, and the longer runs that are commands, not tests.
#   make run   - virtual environment, install, a local 6-brick cluster, a short demo
#   make test  - virtual environment, install, the whole test suite (2 workers), mypy
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run demo down status test unit typecheck bench clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/dds-admin local up
	$(BIN)/python -m dds.tools.demo --local

demo: install
	$(BIN)/python -m dds.tools.demo --local

down: install
	$(BIN)/dds-admin local down

status: install
	$(BIN)/dds-admin local status

# The suite runs in TEST_JOBS pytest-xdist workers, one test file at a time per worker
# (--dist loadfile: a file's module-scoped cluster stays in one worker), the longest files
# first (tests/harness/order.py; --no-loadscope-reorder keeps that order instead of
# xdist's, by number of tests); TEST_JOBS=0 runs it in this process alone.  Bytecode caches are written even where the environment says
# PYTHONDONTWRITEBYTECODE: without them every brick, admin command and client process the
# suite starts compiles DDS's sources again (~0.3 s of CPU each, hundreds of times), and
# pytest rewrites every test module again in each worker (docs/verification.md).
TEST_JOBS ?= 2
test: install
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile \
	    --no-loadscope-reorder --durations=20 tests
	PYTHON=$(BIN)/python scripts/typecheck

unit: install
	$(BIN)/python -m pytest -q tests/unit tests/protocol

typecheck: install
	PYTHON=$(BIN)/python scripts/typecheck

bench: install
	$(BIN)/dds-admin bench --local

clean:
	rm -rf $(VENV) build *.egg-info .dds-local

# Fault runs (tests/faults, docs/verification.md): real bricks behind fault proxies, a seeded
# nemesis, history checks.  SEED=N replays a run; NEMESES=pause,kill,... picks the faults.
MINUTES ?= 60
FAULT_ARGS = $(if $(SEED),--seed $(SEED)) $(if $(NEMESES),--nemeses $(NEMESES))

.PHONY: verify soak sim dr-verify

verify: install
	$(BIN)/python -m tests.faults.runner --profile verify $(FAULT_ARGS)

# The deterministic simulation's campaign: the seed sweep and the hypothesis state machine,
# far wider than the test suite's 50 seeds and 30 examples (docs/simulation.md).
SIM_SEEDS ?= 1000
SIM_EXAMPLES ?= 300
sim: install
	DDS_SIM_SEEDS=$(SIM_SEEDS) DDS_SIM_EXAMPLES=$(SIM_EXAMPLES) $(BIN)/python -m pytest -q \
	    tests/sim/test_simulation.py -k "sweep or TestSimMachine"

# The DR site's fault run (tests/faults/dr.py, issue 17): the whole primary killed, dr
# promote, the clients replay; DR_SEEDS runs from DR_SEED (random when unset).
DR_SEEDS ?= 20
dr-verify: install
	$(BIN)/python -m tests.faults.dr --runs $(DR_SEEDS) $(if $(DR_SEED),--seed $(DR_SEED))

soak: install
	$(BIN)/python -m tests.faults.runner --profile soak --minutes $(MINUTES) $(FAULT_ARGS)
