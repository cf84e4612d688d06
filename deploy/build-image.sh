#!/usr/bin/env bash
# Build the node image with podman from a Debian base made here (no registry needed):
#   1. mmdebstrap a minimal Debian (python3) into a tarball, 2. podman import it as the base,
#   3. collect the daemon's wheels (every dependency but torch, plus the ucx extra) from pip,
#   4. podman build deploy/Containerfile on top. `--smoke` then reads a block through the image.
# PODMAN_ARGS / PODMAN_RUN_ARGS go to the smoke test's `podman [..] run [..]`; on hosts whose crun
# refuses hybrid cgroups or raising rlimits (these VMs):
#   PODMAN_ARGS="--runtime runc" PODMAN_RUN_ARGS="--ulimit nofile=20000:20000 --ulimit nproc=1000:1000"
# Needs root (or rootless podman), and the Debian packages podman and mmdebstrap.
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
TAG=${TAG:-localhost/cachenode:$(python3 -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')}
BASE=localhost/cachenode-base:$SUITE
PY=${PY:-.venv/bin/python}
smoke=0
[[ "${1:-}" == "--smoke" ]] && smoke=1

for tool in podman mmdebstrap; do
  command -v $tool >/dev/null || { echo "$tool not found: apt-get install podman mmdebstrap" >&2; exit 1; }
done
start=$(date +%s)
mkdir -p build

if ! podman image exists "$BASE"; then
  echo "== mmdebstrap $SUITE (minbase + python3) -> build/debian-$SUITE.tar"
  # The base's python3 must match the wheels' (bookworm: 3.11).
  mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    "$SUITE" "build/debian-$SUITE.tar" "$MIRROR"
  podman import --change 'CMD ["/bin/bash"]' "build/debian-$SUITE.tar" "$BASE"
fi

echo "== wheels for the daemon (no torch) -> build/wheels"
rm -rf build/wheels && mkdir -p build/wheels
deps=$("$PY" - <<'PY'
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
print(" ".join([d for d in p["dependencies"] if not d.replace(" ", "").startswith("torch")]
               + p["optional-dependencies"]["ucx"]))
PY
)
# shellcheck disable=SC2086
"$PY" -m pip wheel -q --wheel-dir build/wheels $deps
"$PY" -m pip wheel -q --no-deps --wheel-dir build/wheels .
! ls build/wheels | grep -qi '^torch-' || { echo "torch slipped into the wheels" >&2; exit 1; }

echo "== podman build $TAG"
# chroot isolation: RUN steps need no OCI runtime or cgroups (some VMs' crun refuses hybrid cgroups).
podman build --isolation "${ISOLATION:-chroot}" --build-arg "BASE=$BASE" -f deploy/Containerfile -t "$TAG" .
end=$(date +%s)
size=$(podman image inspect "$TAG" --format '{{.Size}}')
echo "== built $TAG: $((size / 1000000)) MB in $((end - start))s"

if (( smoke )); then
  "$PY" deploy/smoke_image.py "$TAG"
fi
