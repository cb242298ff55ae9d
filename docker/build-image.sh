#!/usr/bin/env bash
# Builds the service image from docker/Dockerfile and reports its size.
#
#   docker/build-image.sh [--cpu] [--wheelhouse] [TAG]
#
# --cpu         CPU-only torch (TORCH_VARIANT=cpu; default tag jmvae:cpu), else the CUDA build (jmvae:latest).
# --wheelhouse  fetch every wheel the image needs on this host first (`pip download` into docker/wheels/, with
#               this host's pip configuration: its index, mirror or proxy) and build with OFFLINE=1, so the build
#               itself needs no network: the usual air-gapped build, and the way to get the CPU torch where
#               PyTorch's index is out of reach.
# Environment:  PYTHON_IMAGE (the base image), TORCH_INDEX_URL (the CPU torch's index, passed to the build and,
#               with --wheelhouse, to pip download), PYTHON (the host's python for --wheelhouse; python3).
#
# With a working Docker engine it runs `docker build`. Without one (no daemon, or none allowed) it builds with
# podman and chroot isolation, which needs no OCI runtime; the host's CA store is mounted so that pip inside
# reaches what the host reaches. With podman and no PYTHON_IMAGE, the base is Debian bookworm's own python3
# (3.11, as python:3.11-slim), bootstrapped once with mmdebstrap and kept in podman's storage as
# localhost/jmvae-base:bookworm.
set -euo pipefail
cd "$(dirname "$0")/.."

variant=cuda
wheelhouse=0
tag=""
for arg in "$@"; do
    case "$arg" in
        --cpu) variant=cpu ;;
        --wheelhouse) wheelhouse=1 ;;
        -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "unknown option $arg (see --help)" >&2; exit 2 ;;
        *) tag="$arg" ;;
    esac
done
[ -n "$tag" ] || { [ "$variant" = cpu ] && tag=jmvae:cpu || tag=jmvae:latest; }

wheels=docker/wheels
find "$wheels" -maxdepth 1 -type f ! -name .gitignore -delete  # never a stale wheel from another build
if [ "$wheelhouse" = 1 ]; then
    py="${PYTHON:-python3}"
    build_req="$("$py" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"])')"
    torch_index=()
    [ "$variant" = cpu ] && [ -n "${TORCH_INDEX_URL:-}" ] && torch_index=(--extra-index-url "$TORCH_INDEX_URL")
    echo "fetching wheels into $wheels ..." >&2
    # shellcheck disable=SC2086  # build_req is a list of requirements
    "$py" -m pip download --quiet --disable-pip-version-check --dest "$wheels" --only-binary=:all: \
        "${torch_index[@]}" pip==26.3 $build_req '.[tracing]'
    find "$wheels" -maxdepth 1 -name 'jmvae-*' -delete  # the package itself is built from the sources
    if [ "$variant" = cpu ] && ls "$wheels" | grep -q '^nvidia_'; then
        echo "warning: this host's index gave the CUDA torch; set TORCH_INDEX_URL to a CPU index" >&2
    fi
fi

args=(--build-arg "TORCH_VARIANT=$variant" --build-arg "OFFLINE=$wheelhouse")
[ -n "${TORCH_INDEX_URL:-}" ] && args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    [ -n "${PYTHON_IMAGE:-}" ] && args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
    docker build -f docker/Dockerfile "${args[@]}" -t "$tag" .
    size="$(docker image inspect --format '{{.Size}}' "$tag")"
elif command -v podman >/dev/null 2>&1; then
    base="${PYTHON_IMAGE:-localhost/jmvae-base:bookworm}"
    if [ -z "${PYTHON_IMAGE:-}" ] && ! podman image exists "$base"; then
        command -v mmdebstrap >/dev/null 2>&1 || { echo "needs mmdebstrap (apt-get install mmdebstrap)" >&2; exit 1; }
        tarball="$(mktemp -d)/base.tar"
        echo "bootstrapping $base with mmdebstrap ..." >&2
        mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
            bookworm "$tarball"
        podman import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            "$tarball" "$base" >/dev/null
        rm -rf "$(dirname "$tarball")"
    fi
    # --format docker keeps the Dockerfile's HEALTHCHECK, which OCI images have no field for.
    podman build --isolation chroot --format docker --volume /etc/ssl/certs:/etc/ssl/certs:ro \
        --build-arg "PYTHON_IMAGE=$base" "${args[@]}" -f docker/Dockerfile -t "$tag" .
    size="$(podman image inspect --format '{{.Size}}' "$tag")"
else
    echo "needs a working Docker engine, or podman (apt-get install podman mmdebstrap)" >&2
    exit 1
fi
echo "built $tag: $(awk -v b="$size" 'BEGIN { printf "%.2f GB (%.0f bytes)", b / 1e9, b }')"
