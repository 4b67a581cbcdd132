# The one gpuguard image. Every component runs it with its own subcommand: `gpuguard webhook`, `gpuguard extender`,
# `gpuguard agent`, and `gpuguard certs` for the chart's certificate jobs (see charts/gpuguard).
#
#   docker build -t ghcr.io/gpuguard/gpuguard:0.1.0 .
#
# The NVIDIA driver library (libnvidia-ml.so.1) is not in the image: the NVIDIA container runtime mounts the node's
# own into the agent's container (the chart's agent.runtimeClassName).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gpuguard gpuguard
COPY webhook webhook
COPY scheduler_ext scheduler_ext
COPY node_agent node_agent
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# The chart runs every pod as this non-root user with a read-only root filesystem.
USER 65532:65532
ENTRYPOINT ["gpuguard"]
