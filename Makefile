# Two entry points (see README): `make demo` runs the main job, `make test` runs every test.
# Both create the virtual environment on first use and reuse it afterwards.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test lint notebooks-check bench catalogs

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv
	$(VENV)/bin/uv pip install -q -p $(PY) -e '.[dev]'
	$(VENV)/bin/pybabel compile -D smsops -d smsops/locale
	touch $@

venv: $(VENV)/.installed

demo: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo

# Japanese (#15): extract the marked strings, add the new ones to the .po (untranslated,
# for a translator to fill: tests/test_catalogs.py fails until they are), compile the .mo.
catalogs: venv
	mkdir -p build
	$(VENV)/bin/pybabel extract -F babel.cfg -k N_ -k chart_text --no-location --sort-output \
		-o build/smsops.pot .
	$(VENV)/bin/pybabel update -D smsops -d smsops/locale -i build/smsops.pot \
		--no-fuzzy-matching --width 100
	$(VENV)/bin/pybabel compile -D smsops -d smsops/locale

lint: venv notebooks-check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy smsops flows

# Notebooks are committed without outputs (run `.venv/bin/nbstripout notebooks/*.ipynb`).
notebooks-check: venv
	$(VENV)/bin/nbstripout --verify notebooks/*.ipynb

# Two workers (pytest-xdist): most of the suite waits on servers and rate caps, so two
# share a 2-core CI machine well; the tests that start a Prefect server of their own run
# one at a time (xdist_group "prefect-server").
test: lint
	$(PY) -m pytest -n 2 --dist loadgroup

bench: venv
	$(PY) benchmarks/phones.py
	$(PY) benchmarks/tickets.py
