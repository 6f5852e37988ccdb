# syntax=docker/dockerfile:1.7
# amvad service image. GPU (default): CUDA runtime + onnxruntime-gpu + CUDA PyTorch (flow and model on the
# GPU, CPU when none is visible). CPU: python slim + CPU PyTorch.
#   docker build -t amvad:gpu .                          # ~7 GB (CUDA/cuDNN runtime + CUDA torch)
#   docker build -t amvad:cpu --build-arg VARIANT=cpu .  # ~1.5 GB
# The bundled model (models/bundled/ped2.onnx) is package data of the wheel, so it is baked in.
ARG VARIANT=gpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# --- the amvad wheel (no dependencies; they are installed below, pinned to pyproject) ---
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models models
COPY runtime runtime
COPY training training
COPY service service
COPY cli cli
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- GPU runtime: CUDA base, CUDA PyTorch, onnxruntime-gpu ---
FROM ${CUDA_IMAGE} AS runtime-gpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu126
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}" \
 && pip install --no-cache-dir "onnxruntime-gpu>=1.17"

# --- CPU runtime: python slim, CPU PyTorch from the official CPU index, onnxruntime ---
FROM ${PYTHON_IMAGE} AS runtime-cpu
ARG TORCH_VERSION=2.13.0
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir "onnxruntime>=1.17"

# --- final image ---
FROM runtime-${VARIANT} AS final
# pyproject's dependencies except torch and onnxruntime (installed above for the variant); a test keeps
# this list equal to pyproject.toml.
RUN pip install --no-cache-dir "numpy>=1.24" "onnx>=1.15" "opencv-contrib-python-headless>=4.8" "av>=11" \
      "pydantic>=2.5" "pyyaml>=6" "tqdm>=4.60" "matplotlib>=3.7" "fastapi>=0.110" "uvicorn>=0.29" \
      "python-multipart>=0.0.9" "prometheus-client>=0.20" "pydantic-settings>=2.2" "httpx>=0.27" \
      "websockets>=13" "fastapi-offline>=1.7" "paho-mqtt>=2.0"
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
RUN useradd --system --uid 10001 --create-home --home-dir /home/amvad amvad \
 && mkdir -p /var/lib/amvad /etc/amvad && chown amvad:amvad /var/lib/amvad /etc/amvad
# Running-normalisation state and cameras added through the API live in AMVAD_STATE_DIR; mount a config at
# /etc/amvad/service.yaml and pass `--config /etc/amvad/service.yaml`. Set AMVAD_API_KEY at run time.
ENV AMVAD_STATE_DIR=/var/lib/amvad MPLCONFIGDIR=/tmp/matplotlib PYTHONUNBUFFERED=1
VOLUME ["/var/lib/amvad", "/etc/amvad"]
USER amvad
WORKDIR /home/amvad
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["amvad", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD []
