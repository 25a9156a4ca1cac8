# The two set-up commands: `make demo` and `make test` (each creates .venv and installs when needed).
# `make docs` builds the documentation site into site/ (offline, --strict: a warning fails it).
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.test-stamp
DOCS_STAMP := $(VENV)/.docs-stamp

.PHONY: install demo test docs docs-serve bench screenshot clean

# the package and its run-time dependencies (editable: a checkout's changes apply at once)
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(STAMP)

# what the tests need besides (pytest and pytest-xdist, moto, import-linter, build, selenium for the browser test)
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,browser]'
	touch $(TEST_STAMP)

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/deepscope run jobs/demo.toml

test: $(TEST_STAMP)
	$(PY) -m pytest -q -x -n 2 --dist loadfile --durations=10

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

bench: $(STAMP)
	$(PY) bench/features.py

# docs/img/report.png, the README's picture, from the demo's report (needs `make demo` first and chromium)
screenshot: $(STAMP)
	$(PY) bench/screenshot.py runs/demo/report/index.html docs/img/report.png

clean:
	rm -rf runs data/demo data/concepts site
