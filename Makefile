# Two commands do everything: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FLASK  := $(BIN)/flask --app wsgi

.PHONY: install run test bench migrate worker clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

migrate: install
	$(FLASK) db upgrade heads

## Install, migrate, create the first admin and demo data, serve web + worker on :5000.
run: migrate
	$(FLASK) setup
	$(FLASK) serve

## Run one extra worker (for a server: `rq worker --url $$REDIS_URL portal` does the same).
worker: install
	$(FLASK) worker

## Install and run every test (browser tests skip with a reason when chromium is missing,
## and fail under CI=true).
test: install
	$(BIN)/pytest $(PYTEST_ARGS)

## Build data at scale and print timings (the figures and their commands: README.md, "Measured").
bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) instance .pytest_cache
