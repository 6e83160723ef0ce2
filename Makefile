# Two entry points (see README): `make demo` runs the main job, `make test` runs every test.
# Both create the virtual environment on first use and reuse it afterwards.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test lint notebooks-check bench

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv
	$(VENV)/bin/uv pip install -q -p $(PY) -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo

lint: venv notebooks-check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy smsops flows

# Notebooks are committed without outputs (run `.venv/bin/nbstripout notebooks/*.ipynb`).
notebooks-check: venv
	$(VENV)/bin/nbstripout --verify notebooks/*.ipynb

test: lint
	$(PY) -m pytest

bench: venv
	$(PY) benchmarks/phones.py
	$(PY) benchmarks/tickets.py
