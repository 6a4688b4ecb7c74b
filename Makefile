# medseg: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=
CKPT ?=
INPUT ?=
OUTPUT ?= preds
PRED ?= $(OUTPUT)
REF ?=
DATASET ?= msd
TASK ?=
DATA ?= data
FOLDS ?= 0,1,2,3,4
CV_STAMP := $(shell date +%Y-%m-%d_%H-%M-%S)
CV_DIR ?= outputs/cv/$(CV_STAMP)

.DEFAULT_GOAL := help
.PHONY: help install demo test test-busy train cv download predict evaluate bench bench-large clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install medseg (editable) with dev extras
	@$(PY) -c "import torch, monai; print(f'torch {torch.__version__} (cuda: {torch.cuda.is_available()}), monai {monai.__version__}')"

demo: install ## train on the embedded synthetic task (generated on first use) and print the validation Dice
	$(PY) -m medseg.train experiment=demo $(ARGS)

train: install ## python -m medseg.train with ARGS="dataset=... model=..."
	$(PY) -m medseg.train $(ARGS)

cv: install ## cross-validate: make cv ARGS="dataset=msd/spleen [dataset.configuration=2d,3d]" [FOLDS=0,1,2,3,4]; table and best configuration/ensemble in CV_DIR/cv_summary.md
	$(PY) -m medseg.train -m dataset.fold=$(FOLDS) trainer.export_validation=true hydra.sweep.dir=$(CV_DIR) $(ARGS)
	$(PY) -m medseg.cv_summary $(CV_DIR)

test: install ## run the test suite (slow end-to-end tests included)
	$(PY) -m pytest -q $(ARGS)

test-busy: install ## the test suite with a busy PyTorch neighbour process beside it (CI machines are sometimes busy)
	$(PY) -m benchmarks.busy_neighbour --seconds 3600 & hog=$$!; \
	$(PY) -m pytest -q $(ARGS); rc=$$?; kill $$hog 2>/dev/null; wait $$hog 2>/dev/null; exit $$rc

download: install ## fetch a dataset: make download TASK=spleen | DATASET=medmnist TASK=pathmnist | DATASET=medsegbench TASK=busi ARGS="--size 256"
	$(PY) scripts/download_data.py --dataset $(DATASET) --task $(TASK) --output $(DATA) $(ARGS)

predict: install ## segment scans: make predict CKPT=outputs/.../best.pt INPUT=scans/ OUTPUT=preds/
	$(PY) -m medseg.predict ckpt=$(CKPT) input=$(INPUT) output=$(OUTPUT) $(ARGS)

evaluate: install ## score predictions: make evaluate PRED=preds/ REF=labels/
	$(PY) -m medseg.evaluate pred=$(PRED) ref=$(REF) $(ARGS)

bench: install ## run the benchmarks (about 5.5 h on 2 CPU cores, 4.5 h of it real data at equal time); tables in benchmarks/results/
	$(PY) -m pip install --disable-pip-version-check -q -e '.[bench]'
	$(PY) -m benchmarks.data_pipeline
	$(PY) -m benchmarks.sliding_window
	$(PY) -m benchmarks.train_step
	$(PY) -m benchmarks.predict
	$(PY) -m benchmarks.ddp
	-$(PY) -m benchmarks.contention   # needs the real hippocampus cases (../shared/data or --data)
	$(PY) -m benchmarks.real_tasks          # hippocampus and ACDC (../shared/data): 3 recipes x 3 folds x 10 min each
	$(PY) -m benchmarks.medsegbench_recipe  # HC18 2D ultrasound (../shared/data/hc18): the same

bench-large: install ## data larger than RAM: peak RSS with cache=disk (~35 min, ~30 GB disk in DATA)
	$(PY) -m benchmarks.large_data --data $(DATA)

clean: ## remove caches and outputs/ runs (keeps data/ and .venv)
	rm -rf outputs/*/ .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
