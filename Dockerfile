# The one gpuguard image. Every component runs it with its own subcommand: `gpuguard webhook`, `gpuguard extender`,
# `gpuguard agent`, and `gpuguard certs` for the chart's certificate jobs (see charts/gpuguard).
#
# Build (what .github/workflows/release.yaml runs for a release, for linux/amd64 and linux/arm64):
#
#   SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) docker buildx build \
#     --build-arg SOURCE_DATE_EPOCH --output type=image,name=ghcr.io/gpuguard/gpuguard:0.1.0,rewrite-timestamp=true .
#
# Reproducible: the base image is named by digest when PYTHON_IMAGE is given as NAME@sha256:... (the release does),
# every Python package is pinned by .ci/image-constraints.txt (the versions the tests ran with; .ci/lock_image.py
# writes it), the final stage installs only the wheels built in the first (no index), no bytecode is written at
# build time, and SOURCE_DATE_EPOCH fixes file and layer timestamps.
#
# The NVIDIA driver library (libnvidia-ml.so.1) is not in the image: the NVIDIA container runtime mounts the node's
# own into the agent's container (the chart's agent.runtimeClassName).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_CONSTRAINT=/src/.ci/image-constraints.txt
WORKDIR /src
COPY .ci/image-constraints.txt .ci/
COPY pyproject.toml README.md ./
COPY gpuguard gpuguard
COPY webhook webhook
COPY scheduler_ext scheduler_ext
COPY node_agent node_agent
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG SOURCE_DATE_EPOCH
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# Exactly the wheels the build stage made (gpuguard and its pinned dependencies), and nothing from an index.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --no-compile /wheels/*.whl
# The chart runs every pod as this non-root user with a read-only root filesystem.
USER 65532:65532
ENTRYPOINT ["gpuguard"]
