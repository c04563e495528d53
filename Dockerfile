# The pimesh image: the controller in the cluster (`pimesh controller run`, see
# deploy/kubernetes/controller.yaml) and every other `pimesh` command.
#   docker build -t pimesh:0.1.0 .
# Runtime dependencies only: no dev tools, no sandbox extras (kmock), no rpi_ws281x.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY controller ./controller
COPY device ./device
COPY sandbox ./sandbox
COPY cli ./cli
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 pimesh \
    && useradd --system --uid 10001 --gid pimesh --no-create-home --shell /usr/sbin/nologin pimesh
# Numeric, so that the kubelet can check runAsNonRoot against the image.
USER 10001:10001
EXPOSE 9090
ENTRYPOINT ["pimesh"]
CMD ["--help"]
