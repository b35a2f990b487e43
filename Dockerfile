# fwproxy in a container. Build:   docker build -t fwproxy .
# Configuration comes entirely from FWPROXY_* environment variables (FWPROXY_TENANT_URL,
# FWPROXY_AUTH_CLIENT_ID, FWPROXY_CLIENT_SECRET_FILE for a Docker secret, ...) or from a
# config file mounted at /etc/fwproxy/config.yaml. See README.md, "Container".
#
# BASE_IMAGE is used by both stages, so the venv built in the first runs in the second.
# Any Debian-like image with `python3` (3.10+) and its venv module works: the official
# python:*-slim images, or Debian with python3 and python3-venv (scripts/image-test.sh
# builds with such a local base).
ARG BASE_IMAGE=python:3.12-slim

# ---- builder: a venv with fwproxy and its runtime dependencies -------------------------
FROM ${BASE_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python3 -m venv /opt/fwproxy
# Only what the package build needs (see .dockerignore): a test change doesn't rebuild.
COPY pyproject.toml setup.cfg README.md ./
COPY fwproxy ./fwproxy
# Build a wheel of fwproxy, then install it with its runtime dependencies, uvloop among them
# (binary wheels from PyPI: no compiler needed), into the venv. The venv is all the final
# stage takes.
RUN /opt/fwproxy/bin/python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && /opt/fwproxy/bin/python -m pip install --no-cache-dir "$(echo /wheels/fwproxy-*.whl)" \
    && /opt/fwproxy/bin/fwproxy --version

# ---- final: the base image, the venv, a non-root user ----------------------------------
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="fwproxy" \
      org.opencontainers.image.description="Authenticating reverse proxy for FotoWeb: plain HTTP in, OAuth 2.0 bearer tokens out" \
      org.opencontainers.image.licenses="MIT"

# A fixed uid, so that secret and key files can be made readable by it alone (fwproxy
# refuses secret files that group or others can read).
RUN groupadd --gid 10001 fwproxy \
    && useradd --no-log-init --uid 10001 --gid fwproxy --home-dir /home/fwproxy \
       --create-home --shell /usr/sbin/nologin fwproxy

COPY --from=builder /opt/fwproxy /opt/fwproxy

# Inside a container the proxy must listen on all interfaces to be reachable. fwproxy
# refuses to start on 0.0.0.0 until the operator chooses who may connect, and this image
# deliberately does not choose for you: set one of
#   FWPROXY_ACCESS_ALLOW_FROM   the client networks, e.g. 10.0.0.0/8 or the compose network
#   FWPROXY_ACCESS_API_KEYS_FILE  a key file (fwproxy key add), clients send X-Fwproxy-Key
#   FWPROXY_ACCESS_ALLOW_PUBLIC=true  any client (only behind another guard)
# and FWPROXY_ACCESS_ACCEPT_HOSTS with the name clients use to reach the service.
ENV PATH="/opt/fwproxy/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FWPROXY_LISTEN_HOST=0.0.0.0

# Numeric, so that runtimes can verify it is not root (Kubernetes runAsNonRoot).
USER 10001:10001
WORKDIR /home/fwproxy
EXPOSE 8080

# `fwproxy health` GETs /_fwproxy/health on the listen address and exits 0 on 200.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["fwproxy", "health"]

ENTRYPOINT ["fwproxy"]
CMD ["run"]
