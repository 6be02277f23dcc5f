FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY broker broker
COPY adapters adapters
COPY monitoring monitoring
# `casebroker bench` measures on the hardware the province runs (docs/BENCHMARKS.md)
COPY bench bench
RUN pip install --no-cache-dir -c constraints.txt .
# /metrics must be reachable from outside the container
ENV CASEBROKER_METRICS_ADDR=0.0.0.0
USER nobody
CMD ["casebroker", "run"]
