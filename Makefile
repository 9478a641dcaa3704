# `make demo` and `make test` each create .venv when missing and install the project into it:
# the pinned torch/torchvision pair first (it comes from local disk on our machines), then vldata.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vldata-installed
DEMO_OUT ?= demo-out
N ?= 20

.PHONY: demo test fuzz venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m vldata.tools.demo $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q

# seeded corruptions of every builder's sample input, N per builder; prints the seed of each failure
fuzz: $(STAMP)
	$(PY) tests/fuzz_raw.py --n $(N)

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
