# Two commands on a fresh machine:  `make demo`  and  `make test`  (see README).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install system-deps demo test test-all lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision first, pinned to the builds on disk here (a plain `torch` would pull a multi-GB CUDA build)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test,lint,ray,openvino]'
	rm -f $(VENV)/.installed-*; touch $@

# Debian packages the optional features use: a CJK font for Chinese overlay labels, Chromium for the page's browser
# tests. Skipped when not root or
# without apt-get (the features then degrade with a warning, e.g. English labels).
SYSTEM_PACKAGES := fonts-wqy-microhei chromium
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); }; \
	else echo "system-deps: not root or no apt-get; install $(SYSTEM_PACKAGES) yourself for Chinese overlay labels"; fi

demo: install
	$(VENV)/bin/defect-agent demo

test: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test-all: install
	$(PY) -m pytest -q

clean:
	rm -rf var/demo .pytest_cache
