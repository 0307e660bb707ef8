# The two commands that matter: `make demo` and `make test` (both set up .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench lint clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -r requirements.lock
	$(BIN)/python -m pip install -q -c requirements.lock --no-deps -e '.[train,gpu,wandb,s3,import,integrations,engines,dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/flightlog demo

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python -m bench.run_all $(if $(QUICK),--quick)

lint: setup
	$(BIN)/ruff check data_schema telemetry trainer_hooks app tests bench

clean:
	rm -rf $(VENV) flightlog-archive .pytest_cache
