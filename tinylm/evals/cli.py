"""``python -m tinylm.evals MODEL_DIR [--tasks lambada,piqa] [--n 200] [--batch_size 16] [--out evals.json]``

Evaluates a model folder written by ``tinylm.checkpoint.save_pretrained`` and prints one row per task and
metric: value, ± standard error and the task's random baseline.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os

from tinylm.evals.sources import EvalDataUnavailable
from tinylm.evals.suite import TASKS, efficiency, resolve_tasks, run_suite
from tinylm.layout import json_with_keys, overwrite_refusal

_SKIP = ("_stderr", "_random", "_n", "_time_s")


def format_table(metrics: dict[str, float], tasks: list[str]) -> str:
    """task | metric | value | ± stderr | random, primary metric first within each task."""
    lines = [f"{'task':<12}{'metric':<12}{'value':>10}{'± stderr':>12}{'random':>12}", "-" * 58]
    for t in tasks:
        prefix = f"eval_{t}_"
        names = [k[len(prefix):] for k in metrics if k.startswith(prefix) and not k.endswith(_SKIP)]
        names.sort(key=lambda m: (m != TASKS[t].primary, m))
        for m in names:
            se = metrics.get(f"{prefix}{m}_stderr", math.nan)
            rnd = metrics.get(f"{prefix}{m}_random", math.nan)
            if m in (TASKS[t].primary, "acc", "acc_norm"):  # acc and acc_norm share the chance level
                rnd = metrics[f"{prefix}random"]
            val = metrics[prefix + m]
            lines.append(f"{t:<12}{m + ('*' if m == TASKS[t].primary else ''):<12}{val:>10.4g}"
                         f"{'' if math.isnan(se) else f'± {se:.4f}':>12}{'' if math.isnan(rnd) else f'{rnd:.4g}':>12}")
    lines.append("-" * 58)
    lines.append(f"{'score':<12}{'mean*':<12}{metrics['eval_score']:>10.4f}{'':>12}"
                 f"{metrics['eval_score_random']:>12.4f}")
    lines.append("* primary metric (eval_score averages them); n per task: "
                 + ", ".join(f"{t} {int(metrics[f'eval_{t}_n'])}" for t in tasks)
                 + f"; {metrics['eval_time_s']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m tinylm.evals", description=__doc__.split("\n")[0])
    p.add_argument("model", help="a folder written by save_pretrained (config.json, model.safetensors, tokenizer)")
    p.add_argument("--tasks", default="all", help=f"comma-separated, from {', '.join(TASKS)}; or 'all'")
    p.add_argument("--n", type=int, default=200, help="examples per task (0 = all)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="picks the example subset")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = torch's default; 1 is several times faster on a shared machine)")
    p.add_argument("--efficiency", action="store_true", help="also measure tokens/s, latency and memory")
    p.add_argument("--out", default=None, help="write the metrics as JSON here (a new file, or an earlier --out of "
                                               "this command)")
    p.add_argument("--force", action="store_true", help="let --out replace another existing file (never a run's "
                                                        "metrics.json or run_info.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    import torch

    from tinylm.checkpoint import ModelFolderError, load_pretrained

    try:  # every argument is checked before the model loads and the suite runs
        tasks = resolve_tasks(args.tasks)
        for name, ok, allowed in (("--n", args.n >= 0, ">= 0 (0 = all)"),
                                  ("--batch_size", args.batch_size >= 1, ">= 1"),
                                  ("--threads", args.threads >= 0, ">= 0 (0 = torch's default)")):
            if not ok:
                raise ValueError(f"{name}={getattr(args, name[2:])} must be {allowed}")
        if args.device not in ("auto", "cpu", "cuda") and not args.device.startswith("cuda:"):
            raise ValueError(f"--device={args.device!r}; choose auto, cpu or cuda[:N]")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device={args.device} but CUDA is not available here; use auto or cpu")
        if args.out:
            refusal = overwrite_refusal(args.out, "--out", args.force, ours=_is_evals_out)
            if refusal:  # a new file, an earlier --out of this command, or (--force) another; never a run's records
                raise ValueError(refusal)
            _check_writable(args.out)
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        model, cfg, tok = load_pretrained(args.model, device=device)
    except (ValueError, ModelFolderError) as e:
        raise SystemExit(f"error: {e}") from None
    if tok is None:
        raise SystemExit(f"error: {args.model} has no tokenizer.json; save the model with its tokenizer")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        metrics = run_suite(model, tok, tasks=tasks, n=args.n, batch_size=args.batch_size, device=device,
                            seed=args.seed)
    except EvalDataUnavailable as e:
        raise SystemExit(f"error: {e}") from None
    print(format_table(metrics, tasks))
    if args.efficiency:
        eff = efficiency(model, cfg, device=device)
        print("  ".join(f"{k} {v:.4g}" for k, v in eff.items()))
        metrics.update(eff)
    if args.out:
        try:
            with open(args.out, "w") as f:
                json.dump(metrics, f, indent=2, sort_keys=True)
        except OSError as e:  # checked writable above, yet it failed: the results are still printed, in full
            print(json.dumps(metrics, indent=2, sort_keys=True))
            raise SystemExit(f"error: cannot write --out {args.out} ({type(e).__name__}: {e}); the metrics are "
                             "printed above") from None
    return metrics


def _check_writable(path: str) -> None:
    """Raise ValueError unless ``path`` can be written (tried by opening it for append: nothing is truncated)."""
    existed = os.path.exists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as e:
        raise ValueError(f"--out {path} cannot be written ({type(e).__name__}: {e})") from None
    if not existed:
        os.remove(path)


def _is_evals_out(path: str) -> bool:
    """A file this command wrote: a JSON object of eval metrics (``eval_score``) and nothing of a training run."""
    return json_with_keys(path, {"eval_score"}, without={"status"})

