"""Can a state-space model learn to copy, and where does it stop? Attention vs Mamba trained on the copy task itself.

Hypothesis: trained on the copy task itself (``dataset="synthetic:copy"``: L uniform random tokens, then the same L
tokens again; tinylm.data), attention learns to copy at every length its context holds, while a Mamba SSM of the
same parameter count, whose state has a fixed size, copies short sequences but fails as L grows; a hybrid
(attention at every second layer) copies like attention. This is how the literature answers "is attention
necessary for recall" (Zoology / MQAR, Arora et al. 2023, arXiv:2312.04927; "Repeat after me", Jelassi et al.
2024, arXiv:2402.01032): sweeps/ssm.py trains on prose, where no model at laptop scale learned to copy at all.

    python sweeps/recall.py --dry-run     # laptop: the 12 trials, their shapes and the time they will take here
    python sweeps/recall.py --analyze     # laptop: 3 mixers x context 64 / 128 x 2 seeds, recall per L, report
                                          # (~2.5 h on 2 cores: --seeds 1 took 74 min, shared; the dry
                                          # run says ~34 min: its throughput model prices attention only)
    python sweeps/recall.py --scale full  # 10M params, V=12288, context 256 / 512 (L up to 256), 50M tokens per
                                          # trial (5 per parameter, as the ssm sweep), on a Ray cluster
    python sweeps/recall.py --scale smoke # mechanics only (seconds per trial; claims nothing)

What it measures: the recall eval (tinylm.evals.recall, all 32 sequences per length) at the end of every run,
``eval_recall_acc_L<L>`` for every L with 2 L <= block_size: the answer to the question. The val loss is the loss
on the copy stream itself: half of it is unpredictable, so its floor is ~ln(V - 1) / 2 nats per token (a model
that copies perfectly) and a model that copies nothing sits at ~ln(V - 1); the verdict's perplexity comparison
with attention is meaningful within one context length only (block_size changes the lengths trained on).
Every variant has the same total parameter count (within 2 %): the budget solver's width, depth and d_ff per mixer.

Laptop scale, sized by hand runs here (attention at context 128 took ~2k steps on the plateau, then learned to
copy abruptly): V = 256 (copying needs no large vocabulary; collisions among L <= 64 tokens stay rare), N = 120k
at an embedding share of 13.6 % (the full run's 35 % at V = 256 would leave under one layer) -> d = 64, 2 layers,
heads of 16 (laptop_shape); 120 tokens per parameter (14.4M tokens, ~7k steps of 2048 tokens: at 68 the same
attention run had only just left the plateau, L = 32 copied at 0.58; at 120, 0.96); context 64 and 128 (L up to
32 and 64) at batch 32 x 64 and 16 x 128, so every trial takes the same steps. Context 256 is not affordable
here: the plateau grows with the context (~1.7k steps at 64, 2-3k at 128, none left at 128 with a batch of 8 in
6k steps). LR by the size rule (no LR grid: 1e-2 never left the plateau). No ASHA, no kill rule: the point is
how far each mixer gets at the end. Time per trial here (1 thread): attention 5 min (53k tokens/s), hybrid 12,
Mamba 20 (11k tokens/s: its scan is pure PyTorch; plan.py's throughput model only knows attention).
The recall eval starts each sequence with EOT, as this stream starts each example (without it, a model that
copies L = 8 at 0.96 scored ~0.35-0.4 there).
Results: results/recall/results.csv, MLflow experiment "recall", REPORT.md under results/analysis/recall (with
--analyze): "Recall per context length" per mixer and context.
"""

from tinylm.config import Config
from tinylm.evals.recall import LENGTHS, PER_LENGTH
from tinylm.sweep import Experiment, Space
from tinylm.sweep.cli import main

PRESET = "budget-10m"  # 10M params, SwiGLU, RMSNorm, RoPE; dims from the solver, per mixer
MIXERS = [dict(mixer="attention", attn_every=0), dict(mixer="mamba", attn_every=0),
          dict(mixer="hybrid", attn_every=2)]
CONTEXTS = {"smoke": (64, 128), "laptop": (64, 128), "full": (256, 512)}  # copies of L <= block_size / 2
BATCH_TOKENS = {"smoke": 512, "laptop": 2048, "full": 4096}  # tokens per step, the same at every context
RECALL_N = len(LENGTHS) * PER_LENGTH  # every sequence of the recall eval (the laptop default keeps 50)
LAPTOP_BUDGET = dict(vocab_size=256, target_params=120_000, embed_share=0.136)
LAPTOP_HEAD_SIZE = 16
TOKENS_PER_PARAM = 120.0  # laptop: what attention needs to leave the plateau and then copy (measured; docstring)


def laptop_shape(mixer: dict) -> dict:
    """The budget solver's dims for ``mixer`` at the laptop budget, as fixed dims with heads of 16. The solver
    prefers the largest head that divides d (2 heads of 32 at d = 64); in one run each at context 128, 2 layers
    with 2 heads of 32 did not leave the copy task's plateau in 3.5k steps, with 4 heads of 16 (the laptop's
    fixed-shape head size) they did after 2k. The head count changes no parameter count: the mixers stay equal."""
    solved = Config.from_name(PRESET).replace(scale="laptop", **LAPTOP_BUDGET, **mixer)
    return dict(n_embd=solved.n_embd, n_layer=solved.n_layer, d_ff=solved.ffn_hidden,
                n_head=solved.n_embd // LAPTOP_HEAD_SIZE)


def space(scale: str) -> Space:
    contexts = [dict(block_size=t, batch_size=BATCH_TOKENS[scale] // t) for t in CONTEXTS[scale]]
    shape = laptop_shape if scale == "laptop" else (lambda _: {})  # elsewhere the solver sets the dims per trial
    return Space(variants=[m | shape(m) | c for m in MIXERS for c in contexts])  # <- mixer x context


EXPERIMENT = Experiment(
    name="recall",
    preset=PRESET,
    space=space,
    baseline=lambda scale: dict(mixer="attention", block_size=CONTEXTS[scale][0]),
    hypothesis="trained on the copy task, attention copies at every length its context holds; a Mamba SSM of "
               "equal parameters fails as the length grows; an attention/SSM hybrid copies like attention",
    description="token mixer (attention / mamba / hybrid) x context, trained on synthetic:copy, recall per L",
    # the copy task at every scale. Full: the ssm sweep's 10M budget and 35 % embedding at V = 12,288, the vocabulary
    # near 8k where the solver's shapes are sane for every mixer (d 280-288, 6-7 layers, heads of 32-40; at 8192
    # attention gets 53 heads of 8, at 6144 two layers); target_params restated so the smoke-shrunk preset still
    # solves before the smoke sizes apply. Every recall sequence (7 lengths x 32) at the end of every run.
    overrides=dict(dataset="synthetic:copy", tokenizer="char", vocab_size=12_288, target_params=10_000_000,
                   evals="recall", eval_n=RECALL_N),
    # laptop: V = 256 and the solver's dims at 150k params (laptop_shape), fixed, so the heads can be 16 wide
    laptop=dict(vocab_size=LAPTOP_BUDGET["vocab_size"], target_params=0, eval_n=RECALL_N, **laptop_shape(MIXERS[0])),
    early_stopping=False, options=dict(seeds=2), tokens_per_param=TOKENS_PER_PARAM, lr_grid=(),
    smoke=dict(vocab_size=64, target_params=40_000, embed_share=0.06, train_tokens=65_536, eval_every_tokens=16_384),
)

if __name__ == "__main__":
    main(EXPERIMENT)
