# The README's two commands. Each creates .venv when missing and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Large best-effort images need Fast DDS's shared-memory segment enlarged (see config/fastdds_shm.xml).
export FASTRTPS_DEFAULT_PROFILES_FILE := $(CURDIR)/config/fastdds_shm.xml
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: demo test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip

# Runtime only (node, evaluation, demo): no torch.
$(VENV)/.runtime: setup.py setup.cfg | $(PY)
	$(PY) -m pip install -q -e '.[ros]'
	touch $@

# Development: torch==2.13.0 is the CPU wheel on disk here; a bare `torch` would pull a CUDA build.
$(VENV)/.dev: $(VENV)/.runtime
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[ros,models,test,fleet]'
	touch $@

demo: $(VENV)/.runtime
	$(VENV)/bin/seg-perception demo --out demo_out

test: $(VENV)/.dev
	$(PY) -m pytest test -n 2 --dist loadgroup -q --timeout 600 -p no:cacheprovider

bench: $(VENV)/.dev
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) demo_out build install log .test_cache
