# retention: a slim, non-root image. Build:
#   docker build -t retention .
# A machine without Docker Hub can pass any Debian-based image with python3 and python3-venv:
#   --build-arg BASE_IMAGE=localhost/python-base
# Behind a TLS-inspecting proxy, mount the proxy's CA bundle for the build and point pip at it:
#   --volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
#   --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG PIP_CERT=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/retention
# Dependencies first, from the lock (exact versions and hashes): this layer survives code edits.
COPY requirements.lock /tmp/requirements.lock
RUN if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi \
    && /opt/retention/bin/pip install --require-hashes --no-deps -r /tmp/requirements.lock
COPY pyproject.toml README.md /src/
COPY retention /src/retention
COPY migrations /src/migrations
RUN if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi \
    && /opt/retention/bin/pip install --no-deps /src

FROM ${BASE_IMAGE}
RUN groupadd --system --gid 10001 retention \
    && useradd --system --uid 10001 --gid retention --home-dir /data --shell /usr/sbin/nologin retention \
    && mkdir -p /data /etc/retention \
    && chown retention:retention /data \
    && chmod 0700 /data
COPY --from=build /opt/retention /opt/retention
# No live config is baked in: mount yours at /etc/retention/config.toml (`run` without one exits
# 2 saying so). The documented example is here to read, and `retention init -` prints a starter.
COPY config.example.toml /usr/share/retention/config.example.toml
ENV PATH=/opt/retention/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RETENTION_CONFIG=/etc/retention/config.toml \
    RETENTION_STORE__URL=sqlite+aiosqlite:////data/retention.db \
    RETENTION_LOG__FORMAT=json
VOLUME ["/data"]
USER retention
WORKDIR /data
EXPOSE 8080
# `retention probe` asks /healthz at whatever address [admin] listen names.
# `retention probe` is a fresh interpreter (about 0.8 s) and one GET /healthz, which answers
# within 70 ms even during a rules change on a store of 1M (make bench-store): 5 s of headroom.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 CMD ["retention", "probe"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["retention"]
CMD ["run"]
