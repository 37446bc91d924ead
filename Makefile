# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make sweep   # creates .venv, installs, runs the main job (a local Ray Tune sweep on bundled data)
#   make test    # creates .venv, installs, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup sweep train test bench lint clean

setup: $(VENV)/.installed

# torch first and pinned: that takes the CPU wheel; a looser requirement pulls GBs of CUDA packages.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

sweep: setup
	$(BIN)/python tune_main.py --num-samples 27 --data_file data/test_small.csv

train: setup
	$(BIN)/python train_single.py --agent_type custom --data_file data/test_small.csv --episodes 20

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m bench.env_throughput
	$(BIN)/python -m bench.throughput

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
