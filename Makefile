# world_model_ctrl — the two commands: `make demo` and `make test` (both set up first).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
# This machine's pip config names optional local indexes that may not exist: hide that noise.
QUIET := 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done

.PHONY: setup demo test colcon bench-deps clean

setup: $(STAMP)

$(STAMP): requirements.txt src/room_sim/setup.py src/world_model_ctrl/setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check pip==26.3 $(QUIET)
	$(VENV)/bin/pip install -q -r requirements.txt $(QUIET)
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e src/room_sim -e src/world_model_ctrl $(QUIET)
	touch $@

demo: setup
	$(VENV)/bin/wmc demo

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile tests   # one worker per core; a module runs in one

colcon: setup
	cd ros2_ws && ../$(VENV)/bin/colcon build

bench-deps: setup
	$(VENV)/bin/pip install -q -r requirements-bench.txt $(QUIET)

clean:
	rm -rf ros2_ws/build ros2_ws/install ros2_ws/log out
