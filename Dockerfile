# syntax=docker/dockerfile:1
#
# evbridge sidecar image.
#
#   docker build -t evbridge:0.1.0 .
#
# Stage `build` turns the source into a wheel and installs that wheel, with the Kafka and
# RabbitMQ extras, into a virtual environment at /opt/evbridge. Only that environment is
# copied into the runtime stage: no source tree, no build tools, no compilers.
# tests/deploy/test_dockerfile.py replays the RUN steps of the build stage in a clean
# virtual environment and runs `evbridge` from it, so keep them plain shell.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
# The wheel of evbridge itself (setuptools comes from PyPI through build isolation).
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist .
# Dependencies must come as wheels (--only-binary): nothing is compiled here either.
RUN set -- /dist/evbridge-*.whl \
    && python -m venv /opt/evbridge \
    && /opt/evbridge/bin/python -m pip install --no-cache-dir --only-binary=:all: "$1[kafka,rabbitmq,nats,otel]" \
    && /opt/evbridge/bin/python -m pip uninstall --yes pip \
    && /opt/evbridge/bin/evbridge version

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="evbridge" \
      org.opencontainers.image.description="Sidecar that bridges application events to Kafka, RabbitMQ and NATS JetStream" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric user, so Kubernetes can check runAsNonRoot without resolving names.
# /var/run/evbridge (socket) and /var/lib/evbridge (spool, data) are the only places the
# bridge writes; in Kubernetes both are volumes and the root filesystem is read-only.
RUN groupadd --system --gid 10001 evbridge \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin evbridge \
    && install -d -o 10001 -g 10001 -m 0750 /var/run/evbridge /var/lib/evbridge \
    && install -d -m 0755 /etc/evbridge
COPY --from=build /opt/evbridge /opt/evbridge
ENV PATH=/opt/evbridge/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Mount a config at /etc/evbridge/evbridge.yaml and set EVBRIDGE_CONFIG to it (the Helm
# chart does). Without one the built-in default runs, and its relative paths (socket,
# output file) land in the working directory.
WORKDIR /var/lib/evbridge
USER 10001:10001
# 8787: the HTTP API on loopback TCP (in Kubernetes the app uses the Unix socket instead);
# 9464: /metrics, /healthz and /readyz.
EXPOSE 8787 9464
# SIGTERM starts a graceful shutdown: stop accepting, finish in-flight events within
# shutdown.grace_s, flush the sinks.
STOPSIGNAL SIGTERM
ENTRYPOINT ["evbridge"]
CMD ["serve"]
