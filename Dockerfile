# triggerd: the server image, also the image of build pods in Kubernetes mode (the Job's
# init container runs git and the build container runs buildah through
# `python -m triggerd.runner`). Build with: docker build -t triggerd .   (or buildah bud)

# --- wheel: build triggerd and its dependencies once, outside the runtime image ----------
FROM python:3.11-slim-bookworm AS wheels
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY triggerd ./triggerd
RUN pip wheel --wheel-dir /wheels .

# --- runtime ----------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# git fetches sources, buildah builds and pushes (vfs storage, chroot isolation: no daemon,
# no Docker socket); ca-certificates for HTTPS registries and git servers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends buildah git openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=wheels /wheels /wheels
RUN pip install --no-index --find-links /wheels triggerd && rm -rf /wheels
# The server runs as this user; build pods override it (init: uid 1000, build: uid 0).
RUN groupadd --gid 10001 triggerd \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/triggerd --create-home \
      --shell /usr/sbin/nologin triggerd
USER 10001:10001
WORKDIR /var/lib/triggerd
EXPOSE 8080
ENTRYPOINT ["triggerd"]
CMD ["serve"]
