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
	@echo "make train MODEL=cgan|regression|zhang|iizuka DATA=... RUN=... STEPS=n|EPOCHS=n ARGS='--key=value ...'"
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

# The demo's training budget: a few minutes on two cores; the pictures show a colorizer
# that has started to learn, not a finished one.
DEMO_STEPS ?= 400

demo: $(READY)
	$(PY) -m preprocess --source=samples --size=64 --mode=tile --out=demo/shards \
		--contact-sheet=demo/contact_sheet.png
	$(PY) -m train --model=cgan --data=demo/shards --run=demo/run --steps=$(DEMO_STEPS) \
		--batch_size=16 --sample_every=100 --eval_every=100 --checkpoint_every=100 --log_every=20
	cp "$$(ls demo/run/samples/*.png | sort | tail -n 1)" demo/before_after.png
	@echo "demo: tiles (gray | colour) in demo/contact_sheet.png; validation photos after"
	@echo "      $(DEMO_STEPS) training steps (gray | colorized | real) in demo/before_after.png;"
	@echo "      loss curves in demo/run/loss_curves.png"

test: $(READY)
	$(PY) -m pytest -q -n 2 --dist=loadfile

bench: $(READY)
	$(PY) -m preprocess.bench
	$(PY) -m train.bench

clean:
	rm -rf demo .pytest_cache
