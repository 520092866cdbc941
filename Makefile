# Two commands do all set-up on a fresh machine with Python 3.11 and pip:
#   make demo   install into .venv, then synth -> convert -> train -> evaluate -> predict on a built-in sample
#   make test   install into .venv (with test tools), then run the test suite
# (make test-fast: the tests not marked slow; make lint: ruff, import-linter contracts, mypy on the public API;
#  make docs: the documentation site into site/, mkdocs build --strict)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo_out
DEMO_N ?= 400
DEMO_EPOCHS ?= 3

.PHONY: setup chromium demo test test-fast lint format docs bench clean constraints

$(BIN)/.installed: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	rm -rf $(DEMO)
	$(BIN)/benbeam synth --out $(DEMO)/reben --n $(DEMO_N) --seed 0 --corrupt 0.02
	$(BIN)/benbeam convert --meta $(DEMO)/reben/metadata.parquet --out $(DEMO)/dataset --shard_size 64
	$(BIN)/python -m bigearthnet_beam.beam_pipeline.demo_summary $(DEMO)/dataset
	$(BIN)/benbeam train --data $(DEMO)/dataset --epochs $(DEMO_EPOCHS) --batch 16 --lr 0.002 --augment --save $(DEMO)/run/unet.keras
	$(BIN)/benbeam evaluate --model $(DEMO)/run/unet.keras --data $(DEMO)/dataset --split test --out $(DEMO)/run/eval_test
	$(BIN)/benbeam synth-tile --out $(DEMO)/tiles --n 2 --size 600 --seed 1 --s1
	$(BIN)/benbeam predict --model $(DEMO)/run/unet.keras --input_dir $(DEMO)/tiles --out $(DEMO)/maps --benchmark

# The HTML report / viewer tests render pages in Debian's Chromium. Installed when missing
# and apt can be used (root, or sudo without a password); otherwise those tests say why they
# skip (and fail under CI).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  S=""; [ "$$(id -u)" -eq 0 ] || S="sudo -n"; \
	  $$S apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$S apt-get install -y -qq chromium >/dev/null \
	  || echo "note: could not install chromium; the browser tests will not run" >&2; }

# Both test targets run on TEST_WORKERS processes (pytest-xdist; 0 runs in this process), a test
# file at a time per process (--dist loadfile: a module's fixtures are built once); the session's
# replica and conversion (tests/conftest.py) are built once and shared by the processes.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: setup chromium
	$(PYTEST) tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The inner loop: every test not marked slow: unit tests plus the session's shared conversion and the
# byte-identity one (tests/conftest.py); no servers, browsers, training, kill tests or fresh environments.
test-fast: setup
	$(PYTEST) -m "not slow" tests

# ruff; the architecture contracts (import-linter) and the types of the public API (mypy), both
# on the package as installed: staged by setup.py build_py, since package_dir maps the folders
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf build/lint && $(BIN)/python setup.py -q build_py --build-lib build/lint
	cd build/lint && PYTHONPATH=. ../../$(BIN)/lint-imports --config ../../pyproject.toml
	cd build/lint && ../../$(BIN)/mypy --config-file ../../pyproject.toml

# The documentation site (mkdocs.yml, docs/): --strict turns a broken link, anchor or API
# reference into an error. docs/hooks/ generates the CLI reference from the parsers.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict -d site

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	$(BIN)/python benchmarks/bench_convert.py
	$(BIN)/python benchmarks/bench_train.py

# launch/constraints.txt: the versions of the base install (conversion stack) in a venv that
# holds only the wheel, for the worker image (launch/Dockerfile)
constraints:
	rm -rf .constraints-venv dist && $(PYTHON) -m venv .constraints-venv
	$(BIN)/python -m pip wheel -q --no-deps -w dist .
	.constraints-venv/bin/python -m pip install -q dist/bigearthnet_beam-*.whl
	.constraints-venv/bin/python -m bigearthnet_beam.launch.make_constraints --out launch/constraints.txt
	rm -rf .constraints-venv

clean:
	rm -rf $(DEMO) bench_out .pytest_cache site build/docs-api
