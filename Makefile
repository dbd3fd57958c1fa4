# The two commands: `make repro` (install + whole DVC pipeline) and `make test` (install + docs
# site build, strict: a broken link or page fails + pytest).
# Install is idempotent: a stamp file records that .venv holds this pyproject's dependencies.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.qsens-installed

.PHONY: install repro test bench clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch torchvision
	$(PY) -m pip install --quiet -e '.[test,ray,docs]'
	touch $(STAMP)

repro: install
	test -d .dvc || $(VENV)/bin/dvc init --no-scm -q
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dvc repro

test: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -q -m 'slow or not slow'

bench: install
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
