# Three targets matter: `make demo`, `make test` and `make lint` (ruff and mypy, as CI runs them).
# All install into .venv first. `make test-fast` skips the tests marked slow and spreads the
# rest over every core (pytest-xdist), for quick checks while editing.
VENV ?= .venv
PY := $(VENV)/bin/python
GEOFM := $(VENV)/bin/geofm
STAMP := $(VENV)/.geofm-installed

.PHONY: install demo test test-fast lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[all,dev]"
	# The onnxruntime QGIS Deepness installs (≤ 1.17, numpy 1.x), kept apart for the export test.
	$(PY) -m pip install -q --upgrade --target $(VENV)/ort117 onnxruntime==1.17.3 "numpy<2"
	touch $(STAMP)

demo: install
	$(GEOFM) build reben datasets/reben_mini outputs/reben_mini.zarr --overwrite --workers 2
	$(GEOFM) split outputs/reben_mini.zarr --method reben
	$(GEOFM) info outputs/reben_mini.zarr --map outputs/reben_mini_split.png
	$(GEOFM) pretrain --bands 14
	$(GEOFM) caption outputs/reben_mini.zarr --seed 0 --per-chip 3
	$(GEOFM) align --init runs/pretrain/pretrain.safetensors --data outputs/reben_mini.zarr \
		--max-steps 40 --set data.crop=64 --output runs/align --quiet
	$(GEOFM) query runs/align/align.safetensors datasets/sentinel2_l1c/s2_l1c_13band_10m_256px.tif \
		"arable land" "coniferous forest" -o outputs/query_similarity.tif --overwrite --quiet

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -n auto -m "not slow" tests

lint: install
	$(VENV)/bin/ruff check geofm tests scripts
	$(VENV)/bin/mypy

clean:
	rm -rf outputs .pytest_cache
