#!/usr/bin/env bash
# The demo environment `make run` needs besides triggerd itself, all on 127.0.0.1:
#   - a CNCF registry on :5000 (storage in data/demo/registry),
#   - a busybox base image in it (127.0.0.1:5000/triggerd/busybox:latest), made FROM scratch
#     with Debian's static busybox because this machine reaches no public registry,
#   - a git daemon on :9418 serving examples/hello as git://127.0.0.1:9418/hello.git.
# Idempotent: what already runs is left alone. `scripts/demo-env.sh stop` stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
demo=$top/data/demo
mkdir -p "$demo"
storage=(--root "$top/data/storage" --runroot "$top/data/run" --storage-driver vfs)

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    for _ in $(seq 1 100); do
        listening "$1" && return 0
        sleep 0.1
    done
    echo "demo-env: nothing listens on 127.0.0.1:$1; see $demo/*.log" >&2
    return 1
}

start_registry() {
    listening 5000 && return 0
    cat >"$demo/registry.yml" <<YAML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $demo/registry}
  delete: {enabled: true}
http: {addr: 127.0.0.1:5000}
YAML
    setsid docker-registry serve "$demo/registry.yml" >"$demo/registry.log" 2>&1 </dev/null &
    echo $! >"$demo/registry.pid"
    wait_port 5000
}

publish_base() {
    local accept="application/vnd.oci.image.index.v1+json,application/vnd.docker.distribution.manifest.list.v2+json,application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json"
    if curl -fsS -o /dev/null -I -H "Accept: $accept" \
        http://127.0.0.1:5000/v2/triggerd/busybox/manifests/latest 2>/dev/null; then
        return 0
    fi
    local ctx=$demo/busybox-context
    rm -rf "$ctx" && mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/tmp" "$ctx/rootfs/etc"
    cp /bin/busybox "$ctx/rootfs/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$ctx/rootfs/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$ctx/rootfs/etc/passwd"
    printf 'FROM scratch\nCOPY rootfs/ /\nCMD ["/bin/sh"]\n' >"$ctx/Containerfile"
    BUILDAH_ISOLATION=chroot buildah "${storage[@]}" build --quiet --timestamp 0 \
        -f "$ctx/Containerfile" -t 127.0.0.1:5000/triggerd/busybox:latest "$ctx" >/dev/null
    buildah "${storage[@]}" push --quiet --tls-verify=false \
        127.0.0.1:5000/triggerd/busybox:latest docker://127.0.0.1:5000/triggerd/busybox:latest
}

start_git() {
    local repo=$demo/git/hello.git work=$demo/hello-work
    if [ ! -d "$repo" ]; then
        git init -q --bare -b main "$repo"
        git -C "$repo" config uploadpack.allowAnySHA1InWant true
        rm -rf "$work" && cp -r examples/hello "$work"
        git -C "$work" init -q -b main
        git -C "$work" add -A
        git -C "$work" -c user.name=triggerd -c user.email=demo@triggerd.invalid \
            commit -q -m "hello: first version"
        git -C "$work" push -q "$repo" main
    fi
    listening 9418 && return 0
    setsid git daemon --reuseaddr --export-all --enable=upload-pack --listen=127.0.0.1 \
        --port=9418 --base-path="$demo/git" "$demo/git" >"$demo/git.log" 2>&1 </dev/null &
    echo $! >"$demo/git.pid"
    wait_port 9418
}

stop() {
    for name in registry git; do
        if [ -f "$demo/$name.pid" ]; then
            kill "$(cat "$demo/$name.pid")" 2>/dev/null || true
            rm -f "$demo/$name.pid"
        fi
    done
}

case "${1:-start}" in
start)
    start_registry
    publish_base
    start_git
    echo "demo-env: registry 127.0.0.1:5000, git://127.0.0.1:9418/hello.git ready"
    ;;
stop) stop ;;
*) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
