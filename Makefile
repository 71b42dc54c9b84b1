# The README's two set-up commands: `make demo` and `make test`.
# Each creates .venv when missing and installs ravine with its dev extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test lint bench gallery docs clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev,docs]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/ravine demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --durations=15

bench: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) benchmarks/optimizer_step.py
	$(PY) benchmarks/fit_overhead.py
	$(PY) benchmarks/fit_overhead.py --interleaved 30 --out benchmarks/results/fit_overhead_interleaved.md
	$(PY) benchmarks/time_to_accuracy.py
	$(PY) benchmarks/hessian_vs_pyhessian.py
	$(PY) benchmarks/diagnostics_overhead.py
	$(PY) benchmarks/diagnose_time.py
	$(PY) benchmarks/monitor_overhead.py
	$(PY) benchmarks/diagnosis_accuracy.py
	$(PY) benchmarks/ddp_throughput.py
	$(PY) benchmarks/collect.py

gallery: $(VENV)/.installed
	$(VENV)/bin/ravine gallery --out gallery

# The documentation site (MkDocs + mkdocstrings) into build/site/; --strict: a broken link fails.
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
