# retention: a slim, non-root image. Build:
#   docker build -t retention .
# A machine without Docker Hub can pass any Debian-based image with python3 and python3-venv:
#   --build-arg BASE_IMAGE=localhost/python-base
# Behind a TLS-inspecting proxy, mount the proxy's CA bundle for the build and point pip at it:
#   --volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
#   --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# Everything pip installs comes from the hashed locks (`make lock`): the runtime dependencies
# from requirements.lock, the build backend (hatchling and what it needs) from
# requirements-build.lock; the package itself is built from this folder with no index at all.
ARG BASE_IMAGE=python:3.11-slim
# The package's version (retention/__init__.py), for the image's label: the build fails when
# they differ, and tests/test_packaging.py says so before a build.
ARG VERSION=0.1.0

FROM ${BASE_IMAGE} AS build
ARG PIP_CERT=""
ARG VERSION
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# The build backend gets a venv of its own, left behind in this stage.
RUN python3 -m venv /opt/retention && python3 -m venv /opt/build
# Dependencies first, from the locks (exact versions and hashes): this layer survives code edits.
COPY requirements.lock requirements-build.lock /tmp/
RUN if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi \
    && /opt/build/bin/pip install --require-hashes --no-deps -r /tmp/requirements-build.lock \
    && /opt/retention/bin/pip install --require-hashes --no-deps -r /tmp/requirements.lock
COPY pyproject.toml README.md LICENSE config.example.toml config.example.tests.toml /src/
COPY retention /src/retention
COPY migrations /src/migrations
# The wheel is built by the locked backend without build isolation and installed without an
# index, so nothing unlocked is fetched; `pip check` fails the build when the lock misses a
# dependency of the package, and the version check when VERSION is not the package's.
RUN /opt/build/bin/pip wheel --no-build-isolation --no-deps --no-index --wheel-dir /tmp/dist /src \
    && /opt/retention/bin/pip install --no-deps --no-index /tmp/dist/customgpt_retention-*.whl \
    && /opt/retention/bin/pip check \
    && shown="$(/opt/retention/bin/retention --version)" \
    && if [ "$shown" != "retention $VERSION" ]; then \
        echo "build arg VERSION=$VERSION, but the package says: $shown" >&2; exit 1; fi

FROM ${BASE_IMAGE}
ARG VERSION
LABEL org.opencontainers.image.title="retention" \
      org.opencontainers.image.description="Enforce conversation-retention policies on CustomGPT.ai agents" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 retention \
    && useradd --system --uid 10001 --gid retention --home-dir /data --shell /usr/sbin/nologin retention \
    && mkdir -p /data /etc/retention \
    && chown retention:retention /data \
    && chmod 0700 /data
COPY --from=build /opt/retention /opt/retention
# No live config is baked in: mount yours at /etc/retention/config.toml (`run` without one exits
# 2 saying so). The documented example is here to read, and `retention init -` prints a starter.
COPY config.example.toml /usr/share/retention/config.example.toml
COPY config.example.tests.toml /usr/share/retention/config.example.tests.toml
ENV PATH=/opt/retention/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RETENTION_CONFIG=/etc/retention/config.toml \
    RETENTION_STORE__URL=sqlite+aiosqlite:////data/retention.db \
    RETENTION_LOG__FORMAT=json
VOLUME ["/data"]
# Numeric, so that a runtime can tell it is not root without reading /etc/passwd (Kubernetes'
# runAsNonRoot): the user and group made above.
USER 10001:10001
WORKDIR /data
EXPOSE 8080
# `retention probe` asks /healthz at whatever address [admin] listen names.
# `retention probe` is a fresh interpreter (about 0.8 s) and one GET /healthz, which answers
# within 70 ms even during a rules change on a store of 1M (make bench-store): 5 s of headroom.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 CMD ["retention", "probe"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["retention"]
CMD ["run"]
