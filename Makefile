# One-command set-up, demo, tests and lint for cldyn_ros.
#
#   make venv    create .venv (if missing) and install everything; re-running is fast
#   make tasks   also install the optional task-network extra (requirements/tasks.txt)
#   make demo    run the fusion demo (writes demo_output/)
#   make test    ruff, mypy, then pytest
#   make colcon  colcon build + colcon test (run by make test)
#   make test-jazzy  the node tests (test/ros) against ROS 2 Jazzy's rclpy, in .venv-jazzy
#   make benchmarks  regenerate the quality tables of docs/benchmarks.md (needs ../shared/data)
#   make lint    ruff and mypy
#   make lock    rewrite requirements/constraints.txt from .venv
#   make clean   remove build products and caches (make distclean also removes .venv)
#
# ROS 2: where a distro is sourced ($ROS_DISTRO set and the system python imports rclpy),
# the venv is created with --system-site-packages and requirements/ros-wheels.txt is
# skipped, so the distro's rclpy is used. Elsewhere the ROS 2 wheels from PyPI are installed.
# Override with `make venv ROS_WHEELS=yes|no`. Switching needs `make distclean venv`.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
REQ := requirements
CONSTRAINTS := $(REQ)/constraints.txt
PYTEST_ARGS ?=

# pip, quiet, with this machine's "Location '...' is ignored" index warnings filtered out.
PIP := $(VPY) -m pip
PIP_INSTALL := $(PIP) install -q --disable-pip-version-check -c $(CONSTRAINTS)
QUIET := 2> >(grep -v "is ignored" >&2)

DISTRO_RCLPY := $(shell [ -n "$${ROS_DISTRO:-}" ] && $(PYTHON) -c 'import rclpy' \
                  >/dev/null 2>&1 && echo yes)
ROS_WHEELS ?= auto
ifeq ($(ROS_WHEELS),auto)
  override ROS_WHEELS := $(if $(DISTRO_RCLPY),no,yes)
endif
VENV_FLAGS := $(if $(DISTRO_RCLPY),--system-site-packages)
REQUIREMENTS := $(REQ)/base.txt $(REQ)/dev.txt $(if $(filter yes,$(ROS_WHEELS)),$(REQ)/ros-wheels.txt)

# Everything that goes into the installed package: a change reinstalls it (non-editable,
# so the installed share/cldyn_ros data always matches the sources).
PACKAGE_SOURCES := setup.py setup.cfg package.xml resource/cldyn_ros \
  $(shell find cldyn_ros launch config models -type f \
            -not -name '*.pyc' -not -path '*/__pycache__/*' 2>/dev/null)

DEPS_STAMP := $(VENV)/.deps-installed
STAMP := $(VENV)/.installed

.PHONY: help venv tasks demo test test-jazzy colcon benchmarks lint lock clean distclean

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

venv: $(STAMP)

$(VPY):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { \
	  echo "error: Python 3.10+ required, $(PYTHON) is $$($(PYTHON) -V 2>&1)" \
	       "(use make PYTHON=python3.x)" >&2; exit 1; }
	@echo "creating $(VENV) with $$($(PYTHON) -V 2>&1)" \
	      "$(if $(DISTRO_RCLPY),(system site packages: ROS 2 $(ROS_DISTRO)),)"
	@$(PYTHON) -m venv $(VENV_FLAGS) $(VENV) || { \
	  echo "error: '$(PYTHON) -m venv' failed (Debian/Ubuntu: apt install python3-venv)" >&2; \
	  rm -rf $(VENV); exit 1; }
	@$(PIP_INSTALL) --upgrade pip setuptools $(QUIET)

$(DEPS_STAMP): $(VPY) $(REQUIREMENTS) $(CONSTRAINTS)
	@echo "installing $(REQUIREMENTS) (ROS 2 wheels: $(ROS_WHEELS))"
	@$(PIP_INSTALL) $(addprefix -r ,$(REQUIREMENTS)) $(QUIET)
	@touch $@

$(STAMP): $(DEPS_STAMP) $(PACKAGE_SOURCES)
	@echo "installing cldyn_ros into $(VENV)"
	@rm -rf build/lib build/bdist.*  # setuptools' build cache would keep deleted modules
	@$(PIP_INSTALL) --no-build-isolation . $(QUIET)
	@touch $@

# The optional extra: torchvision, Ultralytics, transformers (cldyn train task, cldyn eval
# tasks), with the project's lock and its own; pip check fails on a second torch/OpenCV.
TASKS_STAMP := $(VENV)/.tasks-installed
TASKS_REQ := $(REQ)/tasks.txt $(REQ)/tasks-constraints.txt
tasks: venv $(TASKS_STAMP)

$(TASKS_STAMP): $(DEPS_STAMP) $(TASKS_REQ)
	@echo "installing the optional extra $(REQ)/tasks.txt"
	@$(PIP_INSTALL) -c $(REQ)/tasks-constraints.txt -r $(REQ)/tasks.txt $(QUIET)
	@$(PIP) check
	@touch $@

demo: venv
	$(VENV)/bin/cldyn demo --out demo_output

test: venv
	$(VENV)/bin/ruff check .
	$(VPY) -m mypy --config-file mypy.ini
	$(VPY) -m pytest $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory colcon

# colcon build + colcon test of this ament_python package, as a ROS 2 workspace would run
# them (a fast subset of the suite: the whole suite already ran under pytest above).
COLCON_DIR := build/colcon
COLCON_TESTS ?= test/test_packaging.py test/test_paths.py test/model/test_model.py
colcon: venv
	@echo "colcon build + colcon test (into $(COLCON_DIR)/)"
	@rm -rf $(COLCON_DIR)/test_results
	@source $(VENV)/bin/activate && \
	  colcon --log-base $(COLCON_DIR)/log build --base-paths . \
	    --build-base $(COLCON_DIR)/build --install-base $(COLCON_DIR)/install >/dev/null && \
	  colcon --log-base $(COLCON_DIR)/log test --base-paths . --return-code-on-test-failure \
	    --build-base $(COLCON_DIR)/build --install-base $(COLCON_DIR)/install \
	    --test-result-base $(COLCON_DIR)/test_results --pytest-args $(COLCON_TESTS) >/dev/null; \
	  rc=$$?; colcon test-result --test-result-base $(COLCON_DIR)/test_results --verbose; \
	  exit $$rc

# The node tests against ROS 2 Jazzy's rclpy: the ros-jazzy-* wheels pin older versions of
# the ros-* wheels that the Kilted venv has, so they get a venv of their own, with the same
# base requirements. The lock's ROS section is Kilted's: the Jazzy wheels install without it.
# A child of another venv's rclpy process inherits its bootstrap guard and library path:
# both are cleared for the Jazzy interpreter.
JAZZY_VENV ?= .venv-jazzy
JAZZY_PY := $(JAZZY_VENV)/bin/python
JAZZY_PIP := env -u _ROS_WHEELS_BOOTSTRAP_COMPLETE -u LD_LIBRARY_PATH $(JAZZY_PY) -m pip \
  install -q --disable-pip-version-check
JAZZY_DEPS := $(JAZZY_VENV)/.deps-installed
JAZZY_STAMP := $(JAZZY_VENV)/.installed
JAZZY_TESTS ?= test/ros

$(JAZZY_DEPS): $(REQ)/base.txt $(REQ)/dev.txt $(REQ)/ros-wheels-jazzy.txt $(CONSTRAINTS)
	@echo "creating $(JAZZY_VENV) with $$($(PYTHON) -V 2>&1) and the ROS 2 Jazzy wheels"
	@rm -rf $(JAZZY_VENV) && $(PYTHON) -m venv $(JAZZY_VENV)
	@$(JAZZY_PIP) -c $(CONSTRAINTS) --upgrade pip setuptools $(QUIET)
	@$(JAZZY_PIP) -c $(CONSTRAINTS) -r $(REQ)/base.txt -r $(REQ)/dev.txt $(QUIET)
	@$(JAZZY_PIP) -r $(REQ)/ros-wheels-jazzy.txt $(QUIET)
	@touch $@

$(JAZZY_STAMP): $(JAZZY_DEPS) $(PACKAGE_SOURCES)
	@rm -rf build/lib build/bdist.*
	@$(JAZZY_PIP) --no-build-isolation --no-deps . $(QUIET)
	@touch $@

test-jazzy: $(JAZZY_STAMP)
	env -u _ROS_WHEELS_BOOTSTRAP_COMPLETE -u LD_LIBRARY_PATH $(JAZZY_PY) -c \
	  'import rclpy, sensor_msgs.msg; from importlib.metadata import version; \
	   print("rclpy", version("ros-rclpy"), "(Jazzy wheels)")'
	env -u _ROS_WHEELS_BOOTSTRAP_COMPLETE -u LD_LIBRARY_PATH $(JAZZY_PY) -m pytest \
	  $(JAZZY_TESTS) $(PYTEST_ARGS)

benchmarks: venv
	$(VENV)/bin/cldyn eval suite --data ../shared/data --out docs/benchmarks.md

lint: venv
	$(VENV)/bin/ruff check .
	$(VPY) -m mypy --config-file mypy.ini

lock: venv
	$(VPY) $(REQ)/make_lock.py

clean:
	rm -rf build install log demo_output .pytest_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(JAZZY_VENV)
