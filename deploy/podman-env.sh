# Sourced by scripts/build-base-image and scripts/compose-check: podman settings for machines
# where root lacks CAP_SYS_RESOURCE (sandboxes, some CI runners). Podman asks runc to raise
# RLIMIT_NOFILE/RLIMIT_NPROC of every container to the maximum, which such a machine refuses
# ("error setting rlimit type 6: operation not permitted"), so this writes a containers.conf
# with limits the machine grants and runtime runc, and exports CONTAINERS_CONF for podman,
# buildah and podman-compose. A CONTAINERS_CONF already set by the caller is left alone.
#
#   podman_env_setup IMAGE   # IMAGE: any local image to probe the limits with

podman_env_setup() {
    local image=$1 dir nofile nproc candidate
    if [[ -n ${CONTAINERS_CONF:-} ]]; then
        return 0
    fi
    # Without custom limits, containers start: nothing to do.
    if podman run --rm --runtime runc "$image" true >/dev/null 2>&1; then
        return 0
    fi
    dir=${TMPDIR:-/tmp}/facemargin-podman
    mkdir -p "$dir"
    nofile=$(ulimit -Hn)
    [[ $nofile == unlimited ]] && nofile=1048576
    for candidate in "$(ulimit -Hu)" 65536 32768 16384 8192 4096; do
        [[ $candidate == unlimited ]] && candidate=1048576
        if podman run --rm --runtime runc --ulimit "nofile=$nofile:$nofile" \
            --ulimit "nproc=$candidate:$candidate" "$image" true >/dev/null 2>&1; then
            nproc=$candidate
            break
        fi
    done
    if [[ -z ${nproc:-} ]]; then
        echo "podman-env: no ulimits found under which a container starts:" >&2
        podman run --rm --runtime runc "$image" true >&2 || true
        return 1
    fi
    cat >"$dir/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
CONF
    export CONTAINERS_CONF=$dir/containers.conf
    echo "podman-env: CONTAINERS_CONF=$CONTAINERS_CONF (nofile=$nofile, nproc=$nproc, runtime runc)"
}
