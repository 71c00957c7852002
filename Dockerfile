# Production image of `typing-processor run`.
#   docker build -t genesys-typing-processor .
#   docker run --env-file .env genesys-typing-processor
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY pyproject.toml README.md /src/
COPY processor /src/processor
RUN /opt/venv/bin/pip install /src

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home processor
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TYPING_HTTP_PORT=8080
USER 10001
EXPOSE 8080
# SIGTERM drains in-flight work, flushes, commits and exits 0 within 10 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["typing-processor"]
CMD ["run"]
