# Two commands do all the set-up on a fresh machine:
#   make main   installs covidxray in .venv, gets the data, trains + evaluates + reports (three-class)
#   make test   installs covidxray with all three Keras backends in .venv and runs the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= $(if $(wildcard ../shared/data/darkcovidnet),../shared/data/darkcovidnet,data/darkcovidnet)
TASK ?= three-class
RUN ?= runs/darkcovidnet-$(TASK)

.PHONY: install install-all main test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[tensorflow]"

install-all: $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[tensorflow,jax,onnx,serve,test]" "torch==2.13.0"

data/darkcovidnet: | install
	$(BIN)/covidxray data download darkcovidnet --dest data

main: install $(if $(wildcard ../shared/data/darkcovidnet),,data/darkcovidnet)
	$(BIN)/covidxray train --data $(DATA) --task $(TASK) --out $(RUN) --overwrite

test: install-all
	$(BIN)/python -m pytest -q

lint: install-all
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build src/*.egg-info
