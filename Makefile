# The two set-up commands: `make demo` and `make test` (each creates .venv and installs when needed).
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/deepscope run jobs/demo.toml

test: $(STAMP)
	$(PY) -m pytest -q -x --durations=10

bench: $(STAMP)
	$(PY) bench/features.py

clean:
	rm -rf runs data/demo data/concepts
