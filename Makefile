# Two commands a newcomer needs: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
EXTRAS ?= test

.PHONY: test demo bench clean venv flink-jar

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Re-install when setup.py changes; the stamp records which extras were installed.
$(VENV)/.installed-%: setup.py | $(PY)
	$(PIP) install --quiet -e '.[$*]'
	touch $@

venv: $(VENV)/.installed-$(EXTRAS)

# Tests need the test extras (the lambda-learner oracle) and the gcp extra (the Dataflow dry run).
test: $(VENV)/.installed-test,gcp
	$(MAKE) --no-print-directory flink-jar EXTRAS=test,gcp
	$(PY) -m pytest -q --doctest-modules lambda_core transforms tests

# Beam's Flink job server (built by Maven) and the Flink distribution (PyPI), fetched once into
# ~/.cache/lambda-learner/flink; see flink/fetch.sh and the README, "Run on Flink".
flink-jar: $(VENV)/.installed-$(EXTRAS)
	bash flink/fetch.sh $(PY)

demo: $(VENV)/.installed-demo
	$(PY) -m pipeline.demo

bench: $(VENV)/.installed-test
	$(PY) benchmarks/bench_core.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
