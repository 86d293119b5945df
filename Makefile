# Set-up is automatic: every target creates .venv from requirements-lock.txt if needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test book bench bench-dampening notebooks clean-venv

$(STAMP): requirements-lock.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -r requirements-lock.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

## demo: train on the bundled digits data, forget one class with SSD and LFSSD, print the table
demo: $(STAMP)
	$(PY) -m lfssd_tutorial demo

## test: the whole test suite (unit tests and notebooks)
# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning (much faster on a
# shared CPU; results are unchanged, the thread count is fixed by the tests and notebooks).
test: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest

## book: the strict HTML build of the book into _build/html
book: $(STAMP)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

## notebooks: execute every chapter in place (stored outputs, widget state, platform recorded)
notebooks: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -c "import sys; from lfssd_tutorial.notebook import execute_notebooks; execute_notebooks(sys.argv[1:])" book/*.ipynb

## bench: the performance benchmark
bench: $(STAMP)
	$(PY) benchmarks/bench_importance.py

## bench-dampening: the dampening against the importance pass over the papers' smallest forget set (83 CIFAR images)
bench-dampening: $(STAMP)
	$(PY) benchmarks/bench_importance.py --models resnet18 --only dampening --forget-images 83 --reps 9

clean-venv:
	rm -rf $(VENV)
