# The epp image: the Python Endpoint Picker, run as a non-root user on a read-only root filesystem.
#   docker build -t epp:0.1.0 .
# Ports: 9002 ext_proc (gRPC, TLS by default), 9003 gRPC health, 9090 Prometheus metrics.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY epp ./epp
# A wheel of the project and all its dependencies, so the final stage needs no compiler or pip cache.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels epp && rm -rf /wheels
# Numeric user so Kubernetes can enforce runAsNonRoot (the chart sets it).
USER 65532:65532
EXPOSE 9002 9003 9090
ENTRYPOINT ["epp"]
