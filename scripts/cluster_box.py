"""A cluster in a box: the multi-node path of a tinylm sweep, run on one machine as it would run on AWS.

    bash scripts/cluster-test.sh                       # PostgreSQL, this, then the image (the whole check)
    python scripts/cluster_box.py --pg postgresql://postgres:PW@127.0.0.1:5432/postgres   # this part alone

What it starts, every server on 127.0.0.1 and stopped by PID at the end:
- S3 without AWS: moto's server; the bucket holds Ray's storage (``TINYLM_STORAGE=s3://…``: trial checkpoints,
  Tune's state, published models) and MLflow's artifacts.
- MLflow as a server: runs in PostgreSQL, artifacts proxied to S3. Optuna's studies in PostgreSQL.
- A Ray head (no CPUs for trials; the ``tune_driver`` resource, as cluster/aws.yaml's head) and 2 worker nodes,
  each in its own mount namespace (``unshare --mount``) with a private tmpfs over the results folder, the data
  cache and the Ray temp folders: a file one node writes is not there for another, as on AWS.

Then the GLU sweep at smoke scale runs from the head across the workers; once a trial on worker 2 has a checkpoint,
worker 2 is killed (its raylet and every process of it), and the trial must resume on worker 1 from its S3
checkpoint. At the end it checks, on the head: every trial ended once (MLflow, Optuna, results.csv: none lost,
none duplicated), trials ran on both workers, REPORT.md was built, MLflow's artifacts are in S3, and every
trial's model can be exported on the head (from S3). Prints one summary and exits 1 on any failed check.
Needs root (mount namespaces) and a PostgreSQL superuser URI.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tinylm.machine import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BUCKET = "tinylm-box"
SWEEP = "glu"
SEEDS = 2  # 4 variants x 2 seeds = 8 trials


def wait_for(what: str, check, timeout_s: float = 120.0, every_s: float = 0.5):
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        try:
            out = check()
            if out:
                return out
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(every_s)
    raise SystemExit(f"cluster-box: {what} did not come up within {timeout_s:.0f} s")


class Box:
    """The processes of the box; each in its own process group, stopped by PID (never ``ray stop``, which would
    stop every Ray on the machine)."""

    def __init__(self, work: Path):
        self.work, self.procs = work, {}

    def start(self, name: str, cmd: list[str], env: dict) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "w")
        p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = p
        return p

    def kill(self, name: str) -> None:
        """SIGKILL the process group of ``name`` and every descendant (a node's raylet, its workers)."""
        import psutil

        p = self.procs.pop(name, None)
        if p is None or p.poll() is not None:
            return
        try:
            tree = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for q in tree:
            try:
                q.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=10)

    def stop_all(self) -> None:
        for name in list(self.procs)[::-1]:
            self.kill(name)


def node_cmd(head: str | None, work: Path, name: str, cpus: int, private: list[Path]) -> list[str]:
    """``ray start --block`` for a head (``head`` None) or a worker joining ``head``; a worker runs in its own
    mount namespace with a tmpfs over each of ``private`` (and its own Ray temp folder)."""
    ports = {f: free_port() for f in ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
                                      "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                      "--runtime-env-agent-port")}
    lo = free_port() // 100 * 100 % 50000 + 10000  # a private range of worker ports per node
    ray = [str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus),
           "--temp-dir", str(work / name / "ray"), "--disable-usage-stats",
           "--min-worker-port", str(lo), "--max-worker-port", str(lo + 99),
           *[str(x) for kv in ports.items() for x in kv]]
    if head is None:
        return ray + ["--head", "--port", str(free_port()), "--resources", json.dumps({"tune_driver": 8}),
                      "--dashboard-host", "127.0.0.1", "--dashboard-port", str(free_port()),
                      "--ray-client-server-port", str(free_port())]
    ray += ["--address", head, "--resources", json.dumps({f"box_{name}": 1})]
    mounts = " && ".join(f"mkdir -p {p} && mount -t tmpfs tmpfs {p}" for p in private)
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            f"{mounts} && exec {' '.join(_q(a) for a in ray)}"]


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def psql(uri: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(uri, autocommit=True) as c:
        c.execute(sql)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pg", default=os.environ.get("TINYLM_POSTGRES_URI"),
                    help="a PostgreSQL superuser URI (default $TINYLM_POSTGRES_URI)")
    ap.add_argument("--work", help="working folder (default: a new one under /tmp, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the working folder (logs, results) at the end")
    args = ap.parse_args()
    if not args.pg:
        raise SystemExit("cluster-box: --pg (or TINYLM_POSTGRES_URI) must name a PostgreSQL superuser URI")
    if os.geteuid() != 0 or not shutil.which("unshare"):
        raise SystemExit("cluster-box: needs root and unshare (util-linux): each worker node gets its own mounts")
    work = Path(args.work or tempfile.mkdtemp(prefix="tinylm-cluster."))
    work.mkdir(parents=True, exist_ok=True)
    box = Box(work)
    summary: dict = {}
    try:
        ok = run(box, work, args.pg, summary)
    finally:
        box.stop_all()
        for db in ("tinylm_box_mlflow", "tinylm_box_optuna"):
            try:
                psql(args.pg, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            except Exception:  # noqa: BLE001
                pass
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary, indent=2))
    return 0 if ok else 1


def run(box: Box, work: Path, pg: str, summary: dict) -> bool:
    import boto3

    t_start = time.time()
    head_results, head_cache = work / "head" / "results", work / "head" / "cache"
    head_results.mkdir(parents=True)
    moto_port, mlflow_port = free_port(), free_port()
    s3 = f"http://127.0.0.1:{moto_port}"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "box", "AWS_SECRET_ACCESS_KEY": "box", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": s3, "AWS_EC2_METADATA_DISABLED": "true", "PYTHONUNBUFFERED": "1",
           "TINYLM_CACHE": str(head_cache), "TINYLM_RESULTS": str(head_results),
           "TINYLM_STORAGE": f"s3://{BUCKET}/ray",
           # Ray 2.60 turns token authentication on for a head whose home holds a token (~/.ray/auth_token, which a
           # local ray.init() writes): every node and the driver then need it. The box sets it for all of them.
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           # a raylet waits this long to register with the GCS (default 60 s: too short beside a full machine)
           "RAY_raylet_start_wait_time_s": "180"}
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "TINYLM_OPTUNA_STORAGE"):
        env.pop(k, None)

    # S3 (moto) and a bucket
    box.start("moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)], env)
    wait_for("moto", lambda: urllib.request.urlopen(s3, timeout=2).status == 200)
    s3c = boto3.client("s3", endpoint_url=s3, region_name="us-east-1", aws_access_key_id="box",
                       aws_secret_access_key="box")
    s3c.create_bucket(Bucket=BUCKET)

    # PostgreSQL databases for MLflow and Optuna; the MLflow server (artifacts proxied to S3)
    base = pg.rsplit("/", 1)[0]
    for db in ("tinylm_box_mlflow", "tinylm_box_optuna"):
        psql(pg, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        psql(pg, f"CREATE DATABASE {db}")
    pg_driver = base.replace("postgresql://", "postgresql+psycopg2://", 1)
    box.start("mlflow", [str(BIN / "mlflow"), "server", "--backend-store-uri", f"{pg_driver}/tinylm_box_mlflow",
                         "--artifacts-destination", f"s3://{BUCKET}/mlartifacts", "--host", "127.0.0.1",
                         "--port", str(mlflow_port), "--workers", "1"],
              env | {"MLFLOW_S3_ENDPOINT_URL": s3})
    tracking = f"http://127.0.0.1:{mlflow_port}"
    wait_for("the MLflow server", lambda: urllib.request.urlopen(f"{tracking}/health", timeout=2).status == 200,
             timeout_s=180)
    env |= {"MLFLOW_TRACKING_URI": tracking, "TINYLM_OPTUNA_STORAGE": f"{pg_driver}/tinylm_box_optuna"}

    # Ray: a head without trial CPUs, 2 workers with private disks
    head_cmd = node_cmd(None, work, "head", 0, [])
    gcs = f"127.0.0.1:{head_cmd[head_cmd.index('--port') + 1]}"
    box.start("head", head_cmd, env)
    wait_for("the Ray head", lambda: socket.create_connection(tuple((gcs.split(":")[0], int(gcs.split(":")[1])))))
    private = [head_results, head_cache, work / "head" / "ray", Path("/tmp/ray")]
    starts = {w: 0 for w in ("w1", "w2")}

    def workers_up():
        for w in starts:  # a raylet that timed out registering on a loaded machine exits: start it again
            if (w not in box.procs or box.procs[w].poll() is not None) and starts[w] < 3:
                starts[w] += 1
                box.start(w, node_cmd(gcs, work, w, 1, private), env)
        return _workers(gcs, env)

    nodes = wait_for("2 Ray worker nodes", workers_up, timeout_s=600)
    summary["worker_starts"] = starts
    summary["nodes"] = {"head": "127.0.0.1 (0 CPUs, tune_driver 8)", **{w: f"{n[:12]}… (1 CPU, private disk)"
                                                                         for w, n in nodes.items()}}
    print(f"cluster-box: head + {len(nodes)} workers up in {time.time() - t_start:.0f} s: {nodes}", flush=True)

    # the sweep, from the head
    t_sweep = time.time()
    cmd = [sys.executable, str(ROOT / "sweeps" / f"{SWEEP}.py"), "--scale", "smoke", "--seeds", str(SEEDS),
           "--lr-grid", "--analyze", "--address", gcs,
           # 5 evals (a checkpoint each) of 32k tokens: a trial is killed after its second and has 3 to go
           "--set", "train_tokens=163840", "eval_every_tokens=32768"]
    sweep = box.start("sweep", cmd, env | {"RAY_ADDRESS": gcs})
    kill = _kill_mid_trial(box, tracking, nodes, sweep)
    summary["node_kill"] = kill
    rc = sweep.wait(timeout=3600)
    box.procs.pop("sweep", None)
    summary["sweep_wall_s"] = round(time.time() - t_sweep, 1)
    summary["sweep_exit"] = rc
    checks = _check_stores(work, head_results, tracking, env, nodes, kill, s3c, summary)
    summary["checks"] = checks
    summary["total_wall_s"] = round(time.time() - t_start, 1)
    failed = [k for k, v in checks.items() if not v["ok"]]
    if rc != 0:
        failed.append(f"sweep exit {rc} (log: {work / 'sweep.log'})")
        print((work / "sweep.log").read_text()[-4000:])
    summary["failed"] = failed
    return not failed


def _workers(gcs: str, env: dict) -> dict | None:
    """worker name -> Ray node id, once both workers are alive."""
    code = (f"import ray, json; ray.init(address={gcs!r}, logging_level='ERROR'); "
            "print(json.dumps({k[4:]: n['NodeID'] for n in ray.nodes() if n['Alive'] "
            "for k in n['Resources'] if k.startswith('box_')}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    got = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else {}
    return got if len(got) == 2 else None


def _trials(tracking: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking)
    exp = client.get_experiment_by_name(SWEEP)
    if exp is None:
        return []
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("ray_trial_id")]


def _kill_mid_trial(box: Box, tracking: str, nodes: dict, sweep: subprocess.Popen) -> dict:
    """Once a trial on worker 2 has a checkpoint (its second eval), kill worker 2; then time until that trial
    reports again, from worker 1."""
    import mlflow

    client = mlflow.MlflowClient(tracking)

    def victim():
        for r in _trials(tracking):
            if r.data.tags.get("tinylm.nodes", "").split(",")[-1] == nodes["w2"] and r.info.status == "RUNNING":
                if len(client.get_metric_history(r.info.run_id, "val_loss")) >= 2:
                    return r
        return None

    r = wait_for("a trial with a checkpoint on worker 2", lambda: victim() or (sweep.poll() is not None and "gone"),
                 timeout_s=900, every_s=1)
    if r == "gone":
        return {"ok": False, "why": "the sweep ended before a trial on worker 2 had a checkpoint"}
    steps_before = max(m.step for m in client.get_metric_history(r.info.run_id, "val_loss"))
    t_kill = time.time()
    box.kill("w2")
    print(f"cluster-box: killed worker 2 at {time.strftime('%H:%M:%S')} (trial {r.data.tags['ray_trial_id']} at "
          f"{steps_before:,} tokens)", flush=True)

    def moved():
        run = client.get_run(r.info.run_id)
        if run.data.tags.get("tinylm.nodes", "").split(",")[-1] == nodes["w1"]:
            hist = client.get_metric_history(r.info.run_id, "val_loss")
            after = [m for m in hist if m.timestamp / 1000 > t_kill]
            return after or None
        return None

    after = wait_for("the killed trial on worker 1", moved, timeout_s=900, every_s=1)
    first = min(after, key=lambda m: m.timestamp)
    return {"ok": True, "trial": r.data.tags["ray_trial_id"], "tokens_at_kill": steps_before,
            "first_tokens_after": first.step, "recovery_s": round(first.timestamp / 1000 - t_kill, 1),
            # resumed from its checkpoint: its first eval on worker 1 is past the first eval it had done
            "resumed_from_checkpoint": first.step > min(m.step for m in client.get_metric_history(
                r.info.run_id, "val_loss"))}


def _check_stores(work: Path, results: Path, tracking: str, env: dict, nodes: dict, kill: dict, s3c,
                  summary: dict) -> dict:
    import optuna
    import pandas as pd

    checks = {}
    runs = _trials(tracking)
    ids = [r.data.tags["ray_trial_id"] for r in runs]
    expected = 4 * SEEDS
    statuses = {r.data.tags["ray_trial_id"]: r.data.tags.get("tinylm.status", "") for r in runs}
    checks["mlflow"] = {"ok": len(ids) == expected and len(set(ids)) == expected
                        and all(s == "completed" for s in statuses.values()),
                        "trials": len(set(ids)), "runs": len(ids), "expected": expected,
                        "lost": expected - len(set(ids)), "duplicated": len(ids) - len(set(ids)),
                        "statuses": sorted(set(statuses.values()))}
    study = optuna.load_study(study_name=SWEEP, storage=env["TINYLM_OPTUNA_STORAGE"])
    o_ids = [t.user_attrs.get("ray_trial_id") for t in study.trials]
    checks["optuna"] = {"ok": sorted(o_ids) == sorted(set(ids)) and len(o_ids) == expected, "trials": len(o_ids),
                        "lost": expected - len(set(o_ids)), "duplicated": len(o_ids) - len(set(o_ids))}
    csv = results / SWEEP / "results.csv"
    df = pd.read_csv(csv) if csv.is_file() else pd.DataFrame({"trial_id": []})
    c_ids = df["trial_id"].astype(str).tolist()
    checks["results_csv"] = {"ok": sorted(c_ids) == sorted(set(ids)) and len(c_ids) == expected,
                             "rows": len(c_ids), "lost": expected - len(set(c_ids)),
                             "duplicated": len(c_ids) - len(set(c_ids))}
    per_node: dict[str, int] = {}
    name = {v: k for k, v in nodes.items()}
    for r in runs:
        for n in dict.fromkeys(r.data.tags.get("tinylm.nodes", "").split(",")):
            per_node[name.get(n, n or "?")] = per_node.get(name.get(n, n or "?"), 0) + 1
    checks["both_workers"] = {"ok": all(per_node.get(w, 0) > 0 for w in nodes), "trials_per_node": per_node}
    checks["node_kill"] = {"ok": bool(kill.get("ok") and kill.get("resumed_from_checkpoint")),
                           **{k: v for k, v in kill.items() if k != "ok"}}
    report = results / "analysis" / SWEEP / "REPORT.md"
    checks["report_on_head"] = {"ok": report.is_file() and "Verdict" in report.read_text(), "path": str(report)}
    keys = [o["Key"] for page in s3c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]
    art = [k for k in keys if k.startswith("mlartifacts/") and k.endswith("config.json")]
    models = {k.split("/")[3] for k in keys if k.startswith("ray/models/") and k.endswith("model.safetensors")}
    ckpts = [k for k in keys if k.startswith("ray/train/") or "/checkpoint_" in k]
    checks["s3"] = {"ok": len(art) >= expected and models >= set(ids), "objects": len(keys),
                    "mlflow_config_artifacts": len(art), "models": len(models), "checkpoint_objects": len(ckpts)}
    # every trial's model exported on the head, through MLflow (run id) and S3 (the published model)
    exported = 0
    for r in runs:
        out = subprocess.run([sys.executable, "-m", "tinylm.export", r.info.run_id, "--out",
                              str(work / "exports" / r.info.run_id)], env=env, capture_output=True, text=True)
        exported += out.returncode == 0 and (work / "exports" / r.info.run_id / "model.safetensors").is_file()
        if out.returncode:
            checks.setdefault("export_errors", {"ok": False, "first": out.stderr.strip().splitlines()[-1:]})
    checks["export_on_head"] = {"ok": exported == expected, "exported": exported}
    summary["trials_per_node"] = per_node
    return checks


if __name__ == "__main__":
    sys.exit(main())
