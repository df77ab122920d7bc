# syntax=docker/dockerfile:1
# edx-remote-cache operator image.
#   docker build -t ghcr.io/openedx/edx-remote-cache:0.1.0 .
# Runs as uid/gid 65532 with a read-only root filesystem (writes only to /tmp, an emptyDir in the Deployment).
# Kubernetes probes: the Deployment's liveness/readiness probes GET :8080/healthz (kopf's liveness endpoint);
# the HEALTHCHECK below does the same for plain `docker run`.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# README.md* : pyproject.toml names README.md as the long description; the glob keeps the build working either way
COPY pyproject.toml README.md* ./
COPY operator/ operator/
# wheels of the package and of its runtime dependencies only (no [test] or [sandbox] extras)
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="edx-remote-cache" \
      org.opencontainers.image.description="Kubernetes operator that runs an Open edX site's memcached on its own EC2 host" \
      org.opencontainers.image.source="https://github.com/openedx/edx-remote-cache" \
      org.opencontainers.image.licenses="AGPL-3.0-or-later"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    EDX_REMOTE_CACHE_CRD=/app/crds/edxremotecache.yaml
# install from the builder's wheels without copying them into a layer; .pyc files are compiled here, at build
# time, so nothing is written at run time
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels edx-remote-cache
WORKDIR /app
COPY crds/ /app/crds/
USER 65532:65532
EXPOSE 8080 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["edx-remote-cache", "run"]
CMD ["--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz", "--metrics-port=9090"]
