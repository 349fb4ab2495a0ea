# Two commands: `make demo` and `make test`. Both create .venv on first use and are quick afterwards.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_PKG := out/demo-pkg
DEMO_MODEL := models/demo/config.json models/demo/model.safetensors models/demo/vq.safetensors
# torch's CPU build is pinned here, not in the package: a plain `torch` from PyPI is a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test lint dist-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[cpu,export,quant,dev,serve]'
	touch $(STAMP)

# Export the bundled model once (re-exported only when its weights change), then generate with ORT.
$(DEMO_PKG)/manifest.json: $(STAMP) $(DEMO_MODEL)
	$(VENV)/bin/dartrt export -o $(DEMO_PKG) --force

demo: $(DEMO_PKG)/manifest.json
	$(VENV)/bin/dartrt generate $(DEMO_PKG) --n 4 --seed 0 -o out/demo --overwrite
	@echo "demo grid: out/demo/grid.png"

# -P: the checkout's folders are not importable by their own names; tests import dartrt.* as users do.
test: $(STAMP)
	$(PY) -P -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The wheel in fresh venvs away from the checkout: full install and runtime-only (a few minutes).
dist-check: $(STAMP)
	PYTHON=$(PYTHON) tools/dist_check.sh

clean:
	rm -rf $(VENV) out
