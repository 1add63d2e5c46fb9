# Two commands do all the set-up on a fresh machine:
#   make main   installs covidxray in .venv, gets the data, trains + evaluates + reports (three-class)
#   make test   installs covidxray with all three Keras backends in .venv and runs the tests
#               (one pytest-xdist worker per core: 1.56x faster than one process on 2 cores)
# and two start the other faces: make serve (the web page), make notebook (runs the notebook).
# Both install the versions pinned in requirements/*.txt (make lock rewrites them with pip-compile),
# so that a fresh install reproduces the README's numbers.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= $(if $(wildcard ../shared/data/darkcovidnet),../shared/data/darkcovidnet,data/darkcovidnet)
TASK ?= three-class
RUN ?= runs/darkcovidnet-$(TASK)

.PHONY: install install-all lock main test lint clean serve notebook

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q -c requirements/main.txt -e ".[tensorflow]"

install-all: $(BIN)/python
	$(BIN)/python -m pip install -q -c requirements/test.txt -e ".[tensorflow,jax,onnx,serve,test]" "torch==2.13.0"

# Re-pin the versions after changing dependencies in pyproject.toml (pip-tools' pip-compile).
lock:
	$(PYTHON) -m venv .lock-venv && .lock-venv/bin/python -m pip install -q pip-tools
	.lock-venv/bin/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links --extra tensorflow -o requirements/main.txt pyproject.toml
	.lock-venv/bin/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links --extra tensorflow --extra jax --extra onnx --extra serve --extra test \
		--unsafe-package covidxray -o requirements/test.txt pyproject.toml

data/darkcovidnet: | install
	$(BIN)/covidxray data download darkcovidnet --dest data

main: install $(if $(wildcard ../shared/data/darkcovidnet),,data/darkcovidnet)
	$(BIN)/covidxray train --data $(DATA) --task $(TASK) --out $(RUN) --overwrite

serve: $(BIN)/python
	$(BIN)/python -m pip install -q -c requirements/test.txt -e ".[tensorflow,serve]"
	$(BIN)/covidxray serve

notebook: $(BIN)/python
	$(BIN)/python -m pip install -q -c requirements/test.txt -e ".[tensorflow,notebook]"
	cd notebooks && mkdir -p runs && ../$(BIN)/jupyter execute --output="runs/{notebook_name}" covid_xray.ipynb

test: install-all
	$(BIN)/python -m pytest -q -n auto

lint: install-all
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .lock-venv build src/*.egg-info
