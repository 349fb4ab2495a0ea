# Two commands: `make demo` and `make test`. Both create .venv on first use and are quick afterwards.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dartrt generate --n 4 --seed 0 -o out/demo
	@echo "demo grid: out/demo/grid.png"

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) out
