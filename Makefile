# Two commands: `make demo` and `make test`. Both create .venv on first use and are quick afterwards.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_PKG := out/demo-pkg
DEMO_MODEL := models/demo/config.json models/demo/model.safetensors models/demo/vq.safetensors

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,quant,dev]'
	touch $(STAMP)

# Export the bundled model once (re-exported only when its weights change), then generate with ORT.
$(DEMO_PKG)/manifest.json: $(STAMP) $(DEMO_MODEL)
	$(VENV)/bin/dartrt export -o $(DEMO_PKG) --force

demo: $(DEMO_PKG)/manifest.json
	$(VENV)/bin/dartrt generate $(DEMO_PKG) --n 4 --seed 0 -o out/demo
	@echo "demo grid: out/demo/grid.png"

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) out
