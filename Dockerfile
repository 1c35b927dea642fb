# Minimal CPU image for now; the deployment issue makes it multi-stage and slim.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service service
COPY training training
COPY export export
COPY models models
RUN pip install --no-cache-dir . && useradd --create-home --uid 10001 facemargin
USER facemargin
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
CMD ["facemargin", "serve", "--host", "0.0.0.0", "--port", "8000"]
