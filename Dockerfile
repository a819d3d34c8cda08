# screener: the engine, the worklist web app and the connectors share this image (compose.yaml picks the verb).
#   docker build -t screener .
#   docker run --rm screener screener --help
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY screener ./screener
COPY connectors ./connectors
# the sample rule files are built into the wheel (screener/sample_rules: `screener demo` from an empty folder)
COPY rules ./rules
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[postgres]"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SCREENER_RULES_DIR=/app/rules \
    SCREENER_STATE_DIR=/var/lib/screener/state
RUN useradd --system --uid 10001 --home-dir /app screener \
    && mkdir -p /app /var/lib/screener/state \
    && chown -R screener /app /var/lib/screener
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY --chown=screener rules ./rules
USER screener
# 9108: engine /metrics (SCREENER_METRICS_PORT); 8080: web app (SCREENER_WEB_PORT);
# 2575: HL7 v2 MLLP listener; 8090: FHIR R4 endpoint (connectors' --listen)
EXPOSE 9108 8080 2575 8090
CMD ["screener", "--help"]
