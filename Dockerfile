# triggerd: the server image, and the image of build pods in Kubernetes mode (the setting
# kubernetes.image). A build Job overrides the entrypoint with its own command: the init
# container runs `python -m triggerd.runner` on the fetch plan (git, ssh), the build
# container runs it on the build plan (buildah). tests/kubernetes/test_image.py checks that
# this image provides every program those plans call.
# Build with: docker build -t triggerd .   (or: buildah bud -t triggerd .)

# --- wheels: build triggerd and its dependencies once, outside the runtime image ----------
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
# git and openssh-client fetch sources, buildah builds and pushes (vfs storage, chroot
# isolation: no daemon, no Docker socket); ca-certificates for HTTPS registries and git.
RUN apt-get update \
 && apt-get install -y --no-install-recommends buildah git openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=wheels /wheels /wheels
RUN pip install --no-index --find-links /wheels triggerd && rm -rf /wheels
# The server runs as this user. Build pods set their own: the fetch init container runs as
# kubernetes.fetchUid (this uid by default), the build container as uid 0 with only the
# capabilities buildah needs.
RUN groupadd --gid 10001 triggerd \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/triggerd --create-home \
      --shell /usr/sbin/nologin triggerd
USER 10001:10001
WORKDIR /var/lib/triggerd
EXPOSE 8080
# Settings come as arguments (`--config /etc/triggerd/settings.yaml`) or as TRIGGERD_*
# environment variables (TRIGGERD_LISTEN=0.0.0.0:8080, ...).
ENTRYPOINT ["triggerd", "serve"]
