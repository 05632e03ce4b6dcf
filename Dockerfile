# cc-execute: one image for the handler and the worker (docker-compose.yml runs both).
FROM python:3.12-slim

# Node.js and the Claude Code CLI: the handler runs agents as child processes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm ca-certificates git \
    && npm install -g @anthropic-ai/claude-code \
    && npm cache clean --force \
    && apt-get clean && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY runner ./runner
COPY handler ./handler
RUN pip install --no-cache-dir .

# Agents write their work here; mount a volume to keep it.
RUN useradd --create-home --uid 1000 ccx && mkdir -p /work && chown ccx /work
USER ccx
WORKDIR /work
ENTRYPOINT ["ccx"]
