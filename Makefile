# One-command set-up, demo, tests and lint for cldyn_ros.
#
#   make venv    create .venv (if missing) and install everything; re-running is fast
#   make tasks   also install the optional task-network extra (requirements/tasks.txt)
#   make demo    run the fusion demo (writes demo_output/)
#   make test    ruff, then pytest
#   make colcon  colcon build + colcon test (run by make test)
#   make benchmarks  regenerate the quality tables of docs/benchmarks.md (needs ../shared/data)
#   make lint    ruff only
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

.PHONY: help venv tasks demo test colcon benchmarks lint lock clean distclean

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

benchmarks: venv
	$(VENV)/bin/cldyn eval suite --data ../shared/data --out docs/benchmarks.md

lint: venv
	$(VENV)/bin/ruff check .

lock: venv
	$(VPY) $(REQ)/make_lock.py

clean:
	rm -rf build install log demo_output .pytest_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
