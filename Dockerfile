# One image for every flowbus service; docker-compose.yml picks the service:
#   .venv/bin/flowbus service run <name> --host 0.0.0.0 --port 8000
# Each service serves /healthz, /readyz and /docs/asyncapi on port 8000.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    FLOWBUS_HOME=/var/lib/flowbus

RUN pip install --no-cache-dir uv==0.13.9

WORKDIR /app

# Dependencies first, so that a code change does not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project

# Only what the package needs (no .venv, tests or caches from the build context).
COPY libs ./libs
COPY flowbus_services ./flowbus_services
RUN uv sync --frozen --no-dev

# /auth: where docker-compose.yml's auth-init writes the NATS credentials. A
# named volume mounted there takes this folder's owner, so the init can write.
RUN useradd --system --create-home --home-dir /var/lib/flowbus flowbus \
 && install -d -o flowbus -g flowbus -m 0700 /auth
USER flowbus

EXPOSE 8000
CMD [".venv/bin/flowbus", "service", "run", "--help"]
