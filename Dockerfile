# syntax=docker/dockerfile:1
# GridLedger node image, one Dockerfile for every role. Build from the repository root with
# `make images` (deploy/images/build.sh), which first fills build/wheelhouse from the pinned
# pyproject.toml and, where the default base cannot be pulled, makes an equivalent Debian 12
# base offline. By hand:
#   deploy/images/wheelhouse.sh
#   docker build --build-arg ROLE=committer -t gridledger/committer:dev .
# ROLE picks the default command (gridledger-<ROLE>); every role's console script is in the
# image, so the command may also name another (Kubernetes sets `command:`). See
# docs/operations.md.

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first (their layer is reused until the pins change), only from the wheelhouse:
# no index is consulted, so the build needs no network.
COPY build/wheelhouse/ /wheelhouse/
RUN python -m venv /opt/gridledger \
 && /opt/gridledger/bin/pip install --no-index --find-links /wheelhouse \
        -r /wheelhouse/requirements.txt
COPY pyproject.toml ./
COPY protos/ protos/
COPY core/ core/
COPY services/ services/
COPY cli/ cli/
# Generate the protobuf code (never committed), install the project with it (the build backend
# also comes from the wheelhouse), drop the compiler, which is needed only here, and
# precompile the bytecode because the root filesystem is read-only at run time.
RUN rm -rf gen && mkdir -p gen \
 && /opt/gridledger/bin/python -m grpc_tools.protoc -Iprotos --python_out=gen \
        --grpc_python_out=gen $(find protos -name '*.proto' | sort) \
 && find gen/gridledger -type d -exec touch {}/__init__.py \; \
 && /opt/gridledger/bin/pip install --no-index --find-links /wheelhouse --no-deps . \
 && /opt/gridledger/bin/pip uninstall -y grpcio-tools \
 && printf '#!/bin/sh\n# The console script of the role the image was built for (build argument ROLE).\nexec "/opt/gridledger/bin/gridledger-${GRIDLEDGER_IMAGE_ROLE:?}" "$@"\n' \
        > /opt/gridledger/bin/gridledger-node \
 && chmod 0755 /opt/gridledger/bin/gridledger-node \
 && /opt/gridledger/bin/python -m compileall -q /opt/gridledger \
 && /opt/gridledger/bin/python -c "import gridledger_core.ledger.ledger, \
gridledger.common.v1.block_pb2, gridledger_orderer.main, gridledger_committer.main, \
gridledger_endorser.main, gridledger_meter_agent.main, gridctl.main"

FROM ${BASE_IMAGE}
ENV PATH=/opt/gridledger/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# gRPC's I/O in the threads that already wait for it: the value is gridledger_core/rpc/
# grpc_env.py's (gRPC reads it before any code of ours runs); tests/unit/test_grpc_env.py
# holds this line to it.
ENV GRPC_EXPERIMENTS=-event_engine_listener,-event_engine_client
RUN groupadd --gid 10001 gridledger \
 && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin gridledger \
 && mkdir -p /var/lib/gridledger /etc/gridledger/consortium \
 && chown 10001:10001 /var/lib/gridledger
COPY --from=build /opt/gridledger /opt/gridledger
USER 10001:10001
WORKDIR /var/lib/gridledger
VOLUME ["/var/lib/gridledger"]
# gRPC (mutual TLS), plaintext health-only gRPC for kubelet probes, Prometheus /metrics.
EXPOSE 7050 7051 9464
# Last, so the four role images share every layer above.
ARG ROLE=orderer
LABEL org.opencontainers.image.title="gridledger-${ROLE}" \
      org.opencontainers.image.description="GridLedger ${ROLE} node" \
      io.gridledger.role="${ROLE}"
ENV GRIDLEDGER_IMAGE_ROLE=${ROLE}
RUN test -x "/opt/gridledger/bin/gridledger-${ROLE}"
ENTRYPOINT ["/opt/gridledger/bin/gridledger-node"]
CMD ["--help"]
