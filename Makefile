# The two commands the README leads with: `make demo` and `make test` (and `make docs`).
# Both create .venv when missing and install the project into it. On a machine
# without an NVIDIA GPU the CPU build of torch is installed first, so pip never
# pulls the multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_CPU ?= torch==2.13.0
DEMO_OUT ?= demo-out
OUT ?= realistic-cohort

# pytest-xdist: one worker per CPU (tests/conftest.py gives each its share of them); a
# module's tests stay on one worker so its fixtures are made once, and the slowest modules
# start first (tests/conftest.py: SLOWEST_FIRST; xdist would otherwise order modules by
# their number of tests, which leaves the slow few-test ones for the end). pytest-randomly runs
# the tests in a new order every time (it prints the seed; --randomly-seed=N repeats an
# order). `make test` lists the 15 slowest tests at the end.
PYTEST_WORKERS ?= auto
PYTEST_PARALLEL = -n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder

.PHONY: demo test test-fast install docs clean realistic-cohort

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	@if ! command -v nvidia-smi >/dev/null 2>&1 && ! $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "no GPU found: installing the CPU build of torch ($(TORCH_CPU))"; \
		$(BIN)/python -m pip install -q "$(TORCH_CPU)" || $(BIN)/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@

install: $(VENV)/.installed

# The sample cohort's BIDS subjects are the training set (the quick config: the default for fewer epochs); sample_data/formats holds
# the same kind of scan as Analyze and DICOM, which inspect reads too.
demo: install
	$(BIN)/nsql-med inspect sample_data
	$(BIN)/nsql-med inspect sample_data/formats
	$(BIN)/nsql-med fit sample_data --config quick --out $(DEMO_OUT)/model --force
	$(BIN)/nsql-med synthesize --n 16 --model $(DEMO_OUT)/model --out $(DEMO_OUT)/synth --force
	@echo "preview of the synthetic cohort: $(DEMO_OUT)/synth/preview.png"

# The benchmark cohort of real brains from packages (nilearn's MNI ICBM 152, Debian's Colin27):
# the sources are fetched into ~/.cache/nsql-med, the cohort written to $(OUT) (git-ignored by default).
realistic-cohort: install
	$(BIN)/python -m pip install -q -e ".[benchmark]"
	$(BIN)/python benchmarks/realistic_cohort.py --out $(OUT)

test: install
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) --durations=15

# The inner loop: everything that neither trains a network nor uses a model nor starts a process.
test-fast: install
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow and not processes"

# The documentation site (MkDocs + Material) into site/. --strict turns every warning,
# a broken link or a page missing from the nav included, into a failure. The CLI and
# config reference pages are generated from the code at each build (docs/gen_ref.py).
$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install -q -e ".[docs]"
	@touch $@

# pyproject pins mkdocs < 2, so the plugins' banners about MkDocs 2 are silenced.
docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) $(DEMO_OUT) nsql-model synth site .pytest_cache
