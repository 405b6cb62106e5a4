"""
A PNG of a run's metrics.jsonl: reward, accuracy, loss and KL against the step (whichever of them
the file has; train_sft.py logs loss and per-task accuracy). matplotlib is needed only here.

    pip install matplotlib
    python experiments/plot_metrics.py out/rl/cj_grpo-sudoku/metrics.jsonl     # writes metrics.png beside it
"""
import argparse
import json
from pathlib import Path

# (panel title, the columns drawn in it); SFT runs log acc_<task> per task
PANELS = [("reward (rollouts)", ["reward_mean", "eval_reward"]), ("accuracy", ["acc", "eval_acc", "acc_*"]),
          ("loss", ["loss"]), ("KL to the reference", ["kl"])]


def read_rows(path):
    """The rows of metrics.jsonl; null (a non-finite value) is a gap in its curve."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def columns(rows, patterns):
    names = sorted({k for r in rows for k in r})
    return [n for p in patterns for n in names if n == p or (p.endswith("*") and n.startswith(p[:-1]))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("metrics", help="a metrics.jsonl written by train_rl.py or train_sft.py")
    ap.add_argument("--out", default="", help="PNG path (default: metrics.png beside the metrics file)")
    args = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    rows = read_rows(args.metrics)
    panels = [(title, columns(rows, patterns)) for title, patterns in PANELS]
    panels = [(title, cols) for title, cols in panels if cols]
    if not panels:
        raise SystemExit(f"{args.metrics}: none of the columns {[p for _, ps in PANELS for p in ps]}")
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, cols) in zip(axes[:, 0], panels):
        for c in cols:
            points = [(r["step"], r[c]) for r in rows if r.get(c) is not None]
            ax.plot(*zip(*points), marker="o" if c.startswith(("eval", "acc_")) else None, ms=3, label=c)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    out = Path(args.out or Path(args.metrics).with_name("metrics.png"))
    fig.savefig(out, dpi=120)
    print(out)


if __name__ == "__main__":
    main()
