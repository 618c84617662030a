# Every target sets up its own virtual environment first (.venv), so a fresh clone needs
# only Python 3.11 and the package registries.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
READY := $(VENV)/.installed

# make data
SOURCE ?= samples
SIZE ?= 64
MODE ?=
OUT ?= data/shards
ARGS ?=

# make train
MODEL ?= cgan
DATA ?= data/shards
RUN ?= runs/$(MODEL)
STEPS ?=
EPOCHS ?=

.PHONY: help setup data train demo test bench clean

help:
	@echo "make demo                 the whole pipeline on the sample photos that scikit-image ships"
	@echo "make test                 the test suite"
	@echo "make data SOURCE=... SIZE=... MODE=... OUT=... ARGS='--key=value ...'"
	@echo "make train MODEL=cgan|regression DATA=... RUN=... STEPS=n|EPOCHS=n ARGS='--key=value ...'"
	@echo "make bench                speed benchmarks into BENCHMARKS.md"

$(READY): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(READY)

data: $(READY)
	$(PY) -m preprocess --source='$(SOURCE)' --size=$(SIZE) $(if $(MODE),--mode=$(MODE)) --out='$(OUT)' $(ARGS)

train: $(READY)
	$(PY) -m train --model=$(MODEL) --data='$(DATA)' --run='$(RUN)' $(if $(STEPS),--steps=$(STEPS)) \
		$(if $(EPOCHS),--epochs=$(EPOCHS)) $(ARGS)

demo: $(READY)
	$(PY) -m preprocess --source=samples --size=64 --mode=tile --out=demo/shards \
		--contact-sheet=demo/contact_sheet.png
	@echo "demo: shards in demo/shards, tiles (gray | colour) in demo/contact_sheet.png"

test: $(READY)
	$(PY) -m pytest -q -n 2 --dist=loadfile

bench: $(READY)
	$(PY) -m preprocess.bench

clean:
	rm -rf demo .pytest_cache
