#!/usr/bin/env bash
# Install the system packages that triggerd and its tests need on Debian 12 (bookworm).
#
# Idempotent: when every needed program is already present it does nothing and does not
# touch apt at all (so repeated `make test` runs cost nothing and need no network).
# Quiet: apt's output goes to a log that is printed only when something fails.
#
# Packages and why:
#   buildah          builds and pushes the images (chroot isolation, vfs storage: see
#                    tests/support/buildah.py). Debian's buildah hard-depends on uidmap and
#                    golang-github-containers-common (/etc/containers/policy.json), so apt
#                    brings those anyway. Its Recommends (crun/runc, fuse-overlayfs) are NOT
#                    needed: chroot isolation runs RUN steps without an OCI runtime, and the
#                    vfs driver (or native overlay, as root) needs no FUSE.
#   docker-registry  the CNCF distribution registry (v2) the tests push to.
#   git              clone/fetch, and `git daemon` (shipped in the same package).
#   skopeo           inspects/copies images in registries.
#   apache2-utils    htpasswd, to make bcrypt htpasswd files for registry auth.
#   busybox-static   a static /bin/busybox: the tests' base images are built FROM scratch
#                    with it because there is no Docker Hub to pull from.
#   wrk              HTTP load generator for the benchmarks.
#   webhook          adnanh/webhook, baseline (b) of bench/intake_bench.py.
#   ca-certificates  TLS trust store for registries and git over https.
#   openssh-server   sshd on 127.0.0.1 for the test of git over SSH with a sourceSecret key
#                    (openssh-client, which git uses for ssh://, comes with it).
set -euo pipefail

PACKAGES=(
    buildah
    docker-registry
    git
    skopeo
    apache2-utils
    busybox-static
    wrk
    webhook
    ca-certificates
    openssh-server
)

# Each entry: "package:path that proves it is installed".
CHECKS=(
    "buildah:/usr/bin/buildah"
    "docker-registry:/usr/bin/docker-registry"
    "git:/usr/bin/git"
    "git:/usr/lib/git-core/git-daemon"
    "skopeo:/usr/bin/skopeo"
    "apache2-utils:/usr/bin/htpasswd"
    "wrk:/usr/bin/wrk"
    "webhook:/usr/bin/webhook"
    "ca-certificates:/etc/ssl/certs/ca-certificates.crt"
    "openssh-server:/usr/sbin/sshd"
    "openssh-server:/usr/bin/ssh"
)

missing=()
for check in "${CHECKS[@]}"; do
    pkg=${check%%:*}
    path=${check#*:}
    if [[ ! -e $path ]]; then
        missing+=("$pkg")
    fi
done
# A dynamically linked busybox (package "busybox") also provides /bin/busybox but cannot run
# inside a FROM-scratch image, so insist on the static package itself.
if [[ "$(dpkg-query -W -f='${db:Status-Status}' busybox-static 2>/dev/null || true)" != installed ]]; then
    missing+=(busybox-static)
fi

if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "install-system-deps: missing packages (${missing[*]}) and not root; run as root" >&2
    exit 1
fi

log=$(mktemp /tmp/install-system-deps.XXXXXX.log)
run_logged() {
    if ! "$@" >>"$log" 2>&1; then
        echo "install-system-deps: failed: $*" >&2
        tail -n 40 "$log" >&2
        echo "install-system-deps: full log in $log" >&2
        exit 1
    fi
}

echo "install-system-deps: installing ${PACKAGES[*]} (missing: ${missing[*]})" >&2
run_logged "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
run_logged "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"

# Verify instead of trusting apt's exit code alone: a package could install without the
# program we rely on (e.g. a renamed binary in a later release).
for check in "${CHECKS[@]}"; do
    path=${check#*:}
    if [[ ! -e $path ]]; then
        echo "install-system-deps: ${check%%:*} installed but $path is still missing" >&2
        exit 1
    fi
done
rm -f "$log"
