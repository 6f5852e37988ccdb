# amvad service image. GPU (default): CUDA runtime + onnxruntime-gpu + CUDA PyTorch (flow and model on the
# GPU, CPU when none is visible). CPU: python slim + CPU PyTorch. Python packages are the versions pinned in
# requirements.lock (the ones CI tests; refresh with deploy/refresh-lock.sh). Build with Docker or podman
# (`--format docker` keeps the HEALTHCHECK; deploy/README.md):
#   docker build -t amvad:gpu .                          # CUDA/cuDNN runtime + CUDA torch, several GB
#   docker build -t amvad:cpu --build-arg VARIANT=cpu .  # 1.76 GB, measured (deploy/README.md)
# The bundled models (models/bundled/*.onnx) are package data of the wheel, so they are baked in.
# Machines whose pip needs a private CA bundle or a local wheel folder pass them as build args (they reach
# pip as environment variables during the build; the mounted files stay out of the image):
#   --build-arg PIP_CERT=/opt/pip-ca.crt -v /etc/ssl/certs/ca-certificates.crt:/opt/pip-ca.crt:ro
#   --build-arg PIP_FIND_LINKS=/opt/wheelhouse -v /opt/wheels:/opt/wheelhouse:ro
# (podman build takes -v; with Docker use BuildKit secrets or a local index instead.)
ARG VARIANT=gpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# --- the amvad wheel (no dependencies; they are installed below from requirements.lock) ---
FROM ${PYTHON_IMAGE} AS wheel
ARG PIP_CERT
ARG PIP_FIND_LINKS
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models models
COPY runtime runtime
COPY training training
COPY service service
COPY cli cli
RUN python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- GPU runtime: CUDA base, CUDA PyTorch (onnxruntime-gpu comes with the locked packages below) ---
FROM ${CUDA_IMAGE} AS runtime-gpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu126
ARG PIP_CERT
ARG PIP_FIND_LINKS
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

# --- CPU runtime: python slim, CPU PyTorch (from PyTorch's CPU index by default) ---
FROM ${PYTHON_IMAGE} AS runtime-cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PIP_CERT
ARG PIP_FIND_LINKS
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

# --- final image ---
FROM runtime-${VARIANT} AS final
ARG VARIANT
ARG PIP_CERT
ARG PIP_FIND_LINKS
# amvad and its dependencies at the locked versions (torch is already there, for the variant). The GPU
# variant then swaps onnxruntime for onnxruntime-gpu of the same version (one Python module, two builds).
COPY requirements.lock /tmp/requirements.lock
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir -c /tmp/requirements.lock /wheels/*.whl \
 && if [ "${VARIANT}" = gpu ]; then \
      ort="$(pip show onnxruntime | sed -n 's/^Version: //p')" \
      && pip uninstall -y onnxruntime && pip install --no-cache-dir --no-deps "onnxruntime-gpu==${ort}"; \
    fi \
 && rm -rf /wheels /tmp/requirements.lock
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
