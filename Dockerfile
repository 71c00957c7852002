# Production image of `typing-processor run` (and `typing-processor crm-webhook`).
#   docker build -t genesys-typing-processor \
#     --build-arg REVISION="$(git rev-parse HEAD)" --build-arg CREATED="$(date -u +%FT%TZ)" .
#   docker run --env-file .env -p 8080:8080 genesys-typing-processor
#
# The base is pinned by digest (the multi-arch index of python:3.11.13-slim), so a rebuild
# gets the same bytes; dependencies and the build backend come pinned, with their hashes,
# from constraints.txt (.ci/constraints).
# To move the base: docker buildx imagetools inspect python:3.11-slim (README, "Image").
ARG PYTHON_TAG=3.11.13-slim
ARG PYTHON_DIGEST=sha256:9bffe4353b925a1656688797ebc68f9c525e79b1d377a764d232182a519eeec4
ARG PYTHON_IMAGE=python:${PYTHON_TAG}@${PYTHON_DIGEST}

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
# the pinned dependencies first, checked against their hashes: a layer that a change of the
# code does not rebuild
COPY constraints.txt /src/
RUN /opt/venv/bin/pip install --require-hashes --only-binary=:all: --requirement /src/constraints.txt
COPY pyproject.toml README.md /src/
COPY processor /src/processor
# packaged by the pinned backend installed above, not by one fetched at build time
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation /src

FROM ${PYTHON_IMAGE}
ARG PYTHON_TAG
ARG PYTHON_DIGEST
ARG VERSION=0.1.0
ARG REVISION=""
ARG CREATED=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="genesys-typing-processor" \
      org.opencontainers.image.description="Stream processor that keeps Genesys Cloud typing indicators truthful." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="docker.io/library/python:${PYTHON_TAG}" \
      org.opencontainers.image.base.digest="${PYTHON_DIGEST}"
# uid and gid 10001, as the chart's securityContext runs it
RUN groupadd --system --gid 10001 processor \
    && useradd --system --uid 10001 --gid 10001 --no-create-home processor
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TYPING_HTTP_PORT=8080
USER 10001:10001
EXPOSE 8080
# For docker and compose (Kubernetes uses the chart's probes): /healthz answers while the
# event loop runs. The slim base has no curl; the standard library does the request.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['TYPING_HTTP_PORT'], timeout=4)"]
# SIGTERM drains in-flight work, flushes, commits and exits 0 within 10 s. dumb-init (pinned
# in constraints.txt) is PID 1: the kernel drops a signal PID 1 has not asked for, and the
# interpreter asks only once its imports are done, so a SIGTERM in that first second would
# have waited for the grace period's SIGKILL. It forwards signals and exits as the command.
STOPSIGNAL SIGTERM
ENTRYPOINT ["dumb-init", "--", "typing-processor"]
CMD ["run"]
