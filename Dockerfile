# facemargin images.
#
#   docker build -t facemargin .                    # CPU (default target `runtime`)
#   docker build --target gpu -t facemargin:gpu .   # NVIDIA: CUDA 12 + cuDNN 9, the `gpu` extra
#
# Build arguments: BASE_IMAGE, the CPU image's base (a Debian-based Python 3.11 image with
# `python` and `python -m venv`), and CUDA_IMAGE, the GPU image's base (an nvidia/cuda
# 12.x *-cudnn-runtime-ubuntu24.04 tag: onnxruntime-gpu is pinned to a CUDA 12 build; the
# host driver must satisfy the tag's CUDA version, e.g. R575+ for 12.9, or pick an older 12.x
# tag). Installs are pinned: deploy/requirements.lock (CPU) and deploy/requirements-gpu.lock
# (GPU); their headers say how to regenerate them. With podman/buildah, build with
# `--format docker`, or the HEALTHCHECK is dropped (OCI images have none).
# Nothing secret is built in: API keys (FACEMARGIN_API_KEYS) and database URLs
# (FACEMARGIN_DATABASE_URL) are given at run time (docker-compose.yml, .env.example).
# Runs as uid 10001; the SQLite gallery lives on the volume /data (FACEMARGIN_DATA_DIR).

ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.9.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------- CPU: build the venv
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# The pinned dependencies first, in their own layer: code changes reuse it. Wheels only, so
# the build needs no compiler.
COPY deploy/requirements.lock deploy/requirements.lock
RUN /opt/venv/bin/pip install --only-binary=:all: -r deploy/requirements.lock
COPY pyproject.toml README.md ./
COPY service service
COPY training training
COPY export export
COPY models models
# The package and its shipped models (pyproject data-files: /opt/venv/share/facemargin/models,
# where service/vision/preprocess.py looks once installed). `pip check` fails the build when the lock
# no longer satisfies pyproject.toml; the last step proves, from outside the source tree, that
# the installed defaults (FACEMARGIN_MODEL_PATH, FACEMARGIN_DETECTOR_PATH) find the models.
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/pip check \
    && cd / && /opt/venv/bin/python -c "from service.api.settings import Settings; s = Settings(); \
assert s.model_path.is_file(), s.model_path; \
assert (s.detector_path / 'yunet.onnx').is_file(), s.detector_path; \
assert (s.detector_path / 'mtcnn_pnet.onnx').is_file(), s.detector_path; \
print('models:', s.detector_path)"

# ---------------------------------------------------------------- GPU: build the venv
FROM ${CUDA_IMAGE} AS gpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
WORKDIR /src
COPY deploy/requirements-gpu.lock deploy/requirements-gpu.lock
RUN /opt/venv/bin/pip install --only-binary=:all: -r deploy/requirements-gpu.lock
COPY pyproject.toml README.md ./
COPY service service
COPY training training
COPY export export
COPY models models
# onnxruntime-gpu and faiss-gpu-cu12 stand in for onnxruntime and faiss-cpu (same import
# names), so `pip check` may name exactly those two as missing, and nothing else.
RUN /opt/venv/bin/pip install --no-deps . \
    && { /opt/venv/bin/pip check || true; } \
       | grep -vE '^facemargin .* requires (onnxruntime|faiss-cpu), which is not installed\.$' \
       | grep -v '^No broken requirements found\.$' | { ! grep .; } \
    && cd / && /opt/venv/bin/python -c "import onnxruntime as ort; \
assert 'CUDAExecutionProvider' in ort.get_available_providers(), ort.get_available_providers(); \
from service.api.settings import Settings; s = Settings(); \
assert s.model_path.is_file(), s.model_path; print('onnxruntime', ort.__version__, 'with CUDA')"

# ---------------------------------------------------------------- GPU: runtime image
FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 facemargin \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin facemargin \
    && mkdir /data && chown 10001:10001 /data
COPY --from=gpu-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FACEMARGIN_DATA_DIR=/data \
    FACEMARGIN_PROVIDER=cuda
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
CMD ["facemargin", "serve", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------- CPU: runtime image (default)
FROM ${BASE_IMAGE} AS runtime
RUN groupadd --gid 10001 facemargin \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin facemargin \
    && mkdir /data && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FACEMARGIN_DATA_DIR=/data
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
CMD ["facemargin", "serve", "--host", "0.0.0.0", "--port", "8000"]
