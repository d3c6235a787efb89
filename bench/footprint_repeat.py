"""How well two footprint measurements of one configuration agree on this machine. Prints; asserts nothing.

The PRD rule compares latencies measured alone (``tinylm.footprint``): the median of N single-thread forwards
timed with the thread's CPU time. This prints R repeated measurements of one laptop GLU configuration, the
relative gap of each to the first and the measured interquartile range, so the noise a latency comparison must
beat is a number for the machine at hand (and its load) rather than an assumption.

    python bench/footprint_repeat.py                 # 5 measurements of 60 forwards
    python bench/footprint_repeat.py --rounds 10 --repeats 120
"""

from __future__ import annotations

import argparse
import statistics

from tinylm import footprint
from tinylm.config import Config
from tinylm.model import GPT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=60)
    a = ap.parse_args()
    c = Config(scale="laptop", target_params=143_242, vocab_size=1536, embed_share=0.35, glu_factor=2.66,
               mlp="swiglu", block_size=128)
    model = GPT(c)
    rows = [footprint.measure(c, model, repeats=a.repeats) for _ in range(a.rounds)]
    first = rows[0]["latency_ms_b1_l128_alone"]
    print(f"{'round':>5} {'median ms':>10} {'IQR ms':>8} {'vs first':>9} {'memory MB':>10}")
    for i, r in enumerate(rows):
        lat = r["latency_ms_b1_l128_alone"]
        print(f"{i:>5} {lat:>10.3f} {r['latency_ms_b1_l128_iqr']:>8.3f} {100 * (lat / first - 1):>+8.1f}% "
              f"{r['model_mem_mb_b1_l128']:>10.4f}")
    lats = [r["latency_ms_b1_l128_alone"] for r in rows]
    print(f"max/min of the medians: {max(lats) / min(lats):.3f}; s.d./mean: "
          f"{statistics.pstdev(lats) / statistics.mean(lats):.3f}")


if __name__ == "__main__":
    main()
