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
# DOMAIN=gray: gray-only tiles (old scans, no colour truth) for cyclegan's GRAY_DATA
DOMAIN ?=
# RUNNER=beam: the same job as an Apache Beam pipeline (pip install -e '.[beam]'); the Beam
# runner and its options in ARGS: --beam-runner=DataflowRunner --beam-option=--project=...
RUNNER ?=
ARGS ?=

# make train
MODEL ?= cgan
DATA ?= data/shards
RUN ?= runs/$(MODEL)
# cyclegan: shards from `make data DOMAIN=gray`, the gray photos it learns from
GRAY_DATA ?=
STEPS ?=
EPOCHS ?=
# WORKERS=N: N local worker processes train the run together (python -m train.workers)
WORKERS ?=

# make bench PEER_SRC=... PEER_PYTHON=...: the project side by side with the PyTorch
# references instead of its own benchmarks (train/peer_bench.py). PEER_SRC holds clones of
# junyanz/pytorch-CycleGAN-and-pix2pix (as pix2pix/) and richzhang/colorization (as
# colorization/); PEER_PYTHON is a Python with torch, numpy and IPython; PEER_BENCH is the
# script that times the references (default ../shared/peer/bench_peer.py).
PEER_SRC ?=
PEER_PYTHON ?=
PEER_BENCH ?=

# make export / serve / evaluate
VERSION ?=
SERVING_URL ?=
EXPORT ?=
CLASSIFIER ?=

.PHONY: help setup data train export serve evaluate classifier demo pretrained pretrained-guided test test-beam bench bench-beam clean

help:
	@echo "make demo                 the whole pipeline on the sample photos that scikit-image ships"
	@echo "make test                 the test suite"
	@echo "make test-beam            make data RUNNER=beam's tests, in .venv-beam with Apache Beam"
	@echo "make data SOURCE=... SIZE=... MODE=... OUT=... [DOMAIN=gray] [RUNNER=beam] ARGS='--key=value ...'"
	@echo "make train MODEL=cgan|regression|zhang|iizuka|cyclegan|guided DATA=... RUN=... STEPS=n|EPOCHS=n ARGS='--key=value ...'"
	@echo "make train MODEL=cyclegan DATA=<colour shards> GRAY_DATA=<shards of DOMAIN=gray> ...   unpaired, from real gray photos"
	@echo "make train WORKERS=2 ...  one run trained by 2 local worker processes (MultiWorkerMirroredStrategy)"
	@echo "make export RUN=runs/<name> [VERSION=n]   a SavedModel for TF Serving in exports/"
	@echo "make serve [EXPORT=exports/cgan] [SERVING_URL=http://host:8501/v1/models/cgan]   (default: the shipped colorizer)"
	@echo "make evaluate RUN=runs/<name> DATA=<shards or photos> [EXPORT=exports/<name>] [ARGS=...]"
	@echo "make classifier DATA=<CIFAR-10 shards>  the classifier of the semantic-interpretability metric"
	@echo "make bench                speed benchmarks into BENCHMARKS.md"
	@echo "make bench-beam           make data on Beam's DirectRunner against the local writer, into BENCHMARKS.md"
	@echo "make pretrained [TINY=<folder with train/<class>/*.JPEG>] [CIFAR=<CIFAR-10 folder>]   the shipped colorizer (~100 min)"
	@echo "make pretrained-guided [TINY=...] [CIFAR=...]   the shipped guided colorizer (hints, a reference; ~80 min)"
	@echo "make bench PEER_SRC=... PEER_PYTHON=... [PEER_BENCH=...] [ARGS='--rounds=3 --iters=5 ...']"
	@echo "                          side by side with the PyTorch references, into BENCHMARKS.md"

$(READY): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(READY)

data: $(READY)
	$(PY) -m preprocess --source='$(SOURCE)' --size=$(SIZE) $(if $(MODE),--mode=$(MODE)) $(if $(DOMAIN),--domain=$(DOMAIN)) \
		--out='$(OUT)' $(if $(RUNNER),--runner=$(RUNNER)) $(ARGS)

train: $(READY)
	$(PY) $(if $(WORKERS),-m train.workers --workers=$(WORKERS) --,-m train) --model=$(MODEL) --data='$(DATA)' --run='$(RUN)' $(if $(STEPS),--steps=$(STEPS)) \
		$(if $(EPOCHS),--epochs=$(EPOCHS)) $(if $(GRAY_DATA),--gray_data='$(GRAY_DATA)') $(ARGS)

# The demo's training budget: a few minutes on two cores; the pictures show a colorizer
# that has started to learn, not a finished one, beside the shipped colorizer.
DEMO_STEPS ?= 400

# make pretrained: the shipped colorizer's recipe (version 3; export/pretrained/README.md has
# its figures): zhang trained on Tiny ImageNet's train/<class>/*.JPEG folders joined with
# CIFAR-10's train photos, at 64 and 32 px in turn from the first step, about 100 minutes
# alone on two cores; a decoding sweep on the validation photos; the export, in place of
# the shipped one. Without the CIFAR-10 folder it trains on Tiny ImageNet alone, which
# colours CIFAR-10's small photos less well (BENCHMARKS.md, "A 90-minute recipe"). Version 2's recipe,
# about 5 hours (a wider network at 64 px, then a stage at both sizes): PRETRAINED_WIDTH=32
# PRETRAINED_STEPS=45000 PRETRAINED_SCALES= PRETRAINED_SCALED_STEPS=16000 PRETRAINED_GAIN=1
# PRETRAINED_VERSION=2. Every stage resumes: after an interruption, run the same command again.
TINY ?= data/raw/tinyimagenet64
# CIFAR-10's train photos join Tiny ImageNet's when this folder is there (cifar10:PATH's layouts)
CIFAR ?= data/raw/cifar10
PRETRAINED_SOURCE ?= imagefolder:$(TINY)$(if $(wildcard $(CIFAR)), + cifar10:$(CIFAR))
PRETRAINED_DATA ?= data/pretrained64
PRETRAINED_RUN ?= runs/pretrained
PRETRAINED_WIDTH ?= 16
PRETRAINED_STEPS ?= 48000
# the first stage's --scales (empty: 64 px only)
PRETRAINED_SCALES ?= 1,0.5
# a second stage at 64 and 32 px in turn, from the first (0: none)
PRETRAINED_SCALED_STEPS ?= 0
PRETRAINED_TEMPERATURE ?= 0.38
PRETRAINED_REBALANCE ?= 0.5
PRETRAINED_GAIN ?= 1.5
PRETRAINED_VERSION ?= 3
PRETRAINED_FINAL = $(if $(filter 0,$(PRETRAINED_SCALED_STEPS)),$(PRETRAINED_RUN),$(PRETRAINED_RUN)-scales)
# the shards both pretrained targets train on
PRETRAINED_SHARDS = $(PY) -m preprocess --source='$(PRETRAINED_SOURCE)' --size=64 --mode=resize --val-fraction=0.1 \
	--out='$(PRETRAINED_DATA)'
# make pretrained-guided: the shipped guided colorizer's recipe (export/pretrained/guided/;
# its README has the figures): MODEL=guided on make pretrained's photos, at 64 and 32 px in
# turn, about 80 minutes alone on two cores; its PSNR against the number of hints on 1,000
# validation photos; the export, in place of the shipped one. Resumes like make pretrained.
GUIDED_RUN ?= runs/pretrained-guided
GUIDED_STEPS ?= 26000
GUIDED_VERSION ?= 2

export: $(READY)
	$(PY) -m export --run='$(RUN)' $(if $(VERSION),--version=$(VERSION)) $(ARGS)

serve: $(READY)
	$(PY) -m export.web $(if $(SERVING_URL),--serving-url='$(SERVING_URL)',$(if $(EXPORT),--model='$(EXPORT)')) $(ARGS)

evaluate: $(READY)
	$(PY) -m evaluate $(foreach run,$(RUN),--run='$(run)') $(foreach export,$(EXPORT),--export='$(export)') \
		--data='$(DATA)' $(if $(CLASSIFIER),--classifier='$(CLASSIFIER)') $(ARGS)

classifier: $(READY)
	$(PY) -m evaluate.classifier --data='$(DATA)' --out=classifiers/cifar10 $(ARGS)

pretrained: $(READY)
	$(PRETRAINED_SHARDS)
	$(PY) -m train --model=zhang --data='$(PRETRAINED_DATA)' --run='$(PRETRAINED_RUN)' --steps=$(PRETRAINED_STEPS) \
		$(if $(PRETRAINED_SCALES),--scales=$(PRETRAINED_SCALES)) --base_width=$(PRETRAINED_WIDTH) --batch_size=32 --precision=mixed_bfloat16 --beta_1=0.9 --rebalance_lambda=1 \
		--lr_schedule=linear --eval_every=1000 --checkpoint_every=1000 --sample_every=2000 --log_every=200 \
		--keep_checkpoints=30
	$(if $(filter 0,$(PRETRAINED_SCALED_STEPS)),,$(PY) -m train --model=zhang --data='$(PRETRAINED_DATA)' \
		--run='$(PRETRAINED_FINAL)' --init_from='$(PRETRAINED_RUN)' --scales=1,0.5 --steps=$(PRETRAINED_SCALED_STEPS) \
		--base_width=$(PRETRAINED_WIDTH) --batch_size=32 --precision=mixed_bfloat16 --beta_1=0.9 --rebalance_lambda=1 \
		--learning_rate=1e-4 --lr_schedule=linear --decay_start=0 --eval_every=2000 --checkpoint_every=1000 \
		--keep_checkpoints=20)
	$(PY) -m evaluate --run='$(PRETRAINED_FINAL)' --checkpoints=latest --data='$(PRETRAINED_DATA)' --split=val \
		--limit=1000 --name=pretrained-sweep --grid=4 --temperatures=0.38,0.6,1 --decode-rebalance=0,0.5,0.7 \
		--chroma-gains=1,1.2,1.4,1.6
	rm -rf '$(PRETRAINED_FINAL)/export'
	$(PY) -m export --run='$(PRETRAINED_FINAL)' --checkpoint=latest --out='$(PRETRAINED_FINAL)/export' --name=colorizer \
		--version=$(PRETRAINED_VERSION) --temperature=$(PRETRAINED_TEMPERATURE) \
		--decode_rebalance=$(PRETRAINED_REBALANCE) --chroma_gain=$(PRETRAINED_GAIN) --weights=bfloat16
	rm -rf export/pretrained/colorizer && mv '$(PRETRAINED_FINAL)/export/colorizer' export/pretrained/colorizer
	@echo "pretrained: export/pretrained/colorizer; the sweep that chose its decoding: reports/pretrained-sweep/"

pretrained-guided: $(READY)
	$(PRETRAINED_SHARDS)
	$(PY) -m train --model=guided --data='$(PRETRAINED_DATA)' --run='$(GUIDED_RUN)' --steps=$(GUIDED_STEPS) \
		--scales=1,0.5 --batch_size=32 --precision=mixed_bfloat16 --learning_rate=3e-4 --beta_1=0.9 \
		--lr_schedule=linear --eval_every=2000 --checkpoint_every=500 --sample_every=2000 --log_every=200 \
		--keep_checkpoints=10
	$(PY) -m evaluate.hints --run='$(GUIDED_RUN)' --data='$(PRETRAINED_DATA)' --split=val --limit=1000 --patch=3 \
		--name=pretrained-guided-hints --plot='$(GUIDED_RUN)/hints.png'
	rm -rf '$(GUIDED_RUN)/export'
	$(PY) -m export --run='$(GUIDED_RUN)' --checkpoint=latest --out='$(GUIDED_RUN)/export' --name=guided \
		--version=$(GUIDED_VERSION) --weights=bfloat16
	rm -rf export/pretrained/guided && mv '$(GUIDED_RUN)/export/guided' export/pretrained/guided
	@echo "pretrained-guided: export/pretrained/guided; PSNR against the number of hints: reports/pretrained-guided-hints/"

demo: $(READY)
	$(PY) -m preprocess --source=samples --size=64 --mode=tile --out=demo/shards \
		--contact-sheet=demo/contact_sheet.png
	$(PY) -m train --model=cgan --data=demo/shards --run=demo/run --steps=$(DEMO_STEPS) \
		--batch_size=16 --sample_every=100 --eval_every=100 --checkpoint_every=100 --log_every=20
	cp "$$(ls demo/run/samples/*.png | sort | tail -n 1)" demo/before_after.png
	$(PY) -m export --run=demo/run --out=demo/exports
	photos="$$($(PY) -c 'from preprocess.console import quiet_tensorflow; quiet_tensorflow(); \
		from preprocess.sources import DEMO_PHOTOS, sample_photos; \
		print(" ".join(str(path) for key, path in sample_photos().items() if key in DEMO_PHOTOS))')"; \
	$(PY) -m export.colorize --model demo/exports/cgan --output demo/colorized/run $$photos && \
	$(PY) -m export.colorize --output demo/colorized/shipped $$photos && \
	$(PY) -m export.sheet --out demo/photos_before_after.png --column "cgan, $(DEMO_STEPS) steps=demo/colorized/run" \
		--column "shipped colorizer=demo/colorized/shipped" $$photos
	@echo "demo: tiles (gray | colour) in demo/contact_sheet.png; validation photos after"
	@echo "      $(DEMO_STEPS) training steps (gray | colorized | real) in demo/before_after.png;"
	@echo "      a SavedModel in demo/exports/cgan; photos at full resolution, gray | the demo's"
	@echo "      cgan | the shipped colorizer | the original: demo/photos_before_after.png"

test: $(READY)
	$(PY) -m pytest -q -n 2 --dist=loadfile

# Apache Beam caps Pillow, protobuf and pyarrow below what the base install takes (setup.cfg),
# so its tests run in a virtual environment of their own, with the tests of what those pins touch.
BEAM_VENV ?= .venv-beam

$(BEAM_VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(BEAM_VENV)
	$(BEAM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BEAM_VENV)/bin/python -m pip install --quiet -e '.[dev,beam]'
	touch $@

test-beam: $(BEAM_VENV)/.installed
	$(BEAM_VENV)/bin/python -m pytest -q -n 2 --dist=loadfile tests/test_beam.py tests/test_preprocess.py tests/test_images.py

# make bench-beam [ARGS='--cases=photos,cifar10,tiny --per-class=cifar10:N,tiny:M']: make data on Beam's
# DirectRunner against the local writer, with a check that both wrote the same; into BENCHMARKS.md
bench-beam: $(BEAM_VENV)/.installed
	$(BEAM_VENV)/bin/python -m preprocess.beam_bench $(ARGS)

bench: $(READY)
ifneq ($(PEER_SRC)$(PEER_PYTHON),)
	$(PY) -m train.peer_bench --peer-src='$(PEER_SRC)' --peer-python='$(PEER_PYTHON)' \
		$(if $(PEER_BENCH),--peer-bench='$(PEER_BENCH)') $(ARGS)
else
	$(PY) -m preprocess.bench
	$(PY) -m train.bench
	$(PY) -m train.bench --model=regression
	$(PY) -m train.bench --model=zhang
	$(PY) -m train.bench --model=iizuka
	$(PY) -m train.bench --model=cyclegan
	$(PY) -m export.bench
	$(PY) -m export.bench --model=zhang
	$(PY) -m export.bench --model=iizuka
endif

clean:
	rm -rf demo .pytest_cache
