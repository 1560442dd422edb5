"""Draw the demo's loss curves (docs/loss.png in README) from training runs' metrics.jsonl.

    python docs/plot_metrics.py                                   # out/tiny then out/tiny_sft -> docs/loss.png
    python docs/plot_metrics.py --runs out/s1 out/s2 out/s3 out/s4 --out s1-s4.png

Each run is drawn after the one before it: its steps are offset by the previous run's last step, as SFT
continues from pretraining. Train loss is the logged step's batch loss; held-out loss is the mean over the
stage's eval batches (its mixture's val split). Needs matplotlib (requirements-dev.txt).
"""
import argparse
import json
import os


def read_metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot(runs: list[str], out: str):
    """One figure: train (thin) and held-out (markers) loss of each run, runs laid end to end."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    offset = 0
    for i, run in enumerate(runs):
        rows = read_metrics(run)
        if not rows:
            raise SystemExit(f"error: {run}/metrics.jsonl is empty")
        color = f"C{i}"
        name = os.path.basename(os.path.normpath(run))
        ax.plot([offset + r["step"] for r in rows], [r["loss"] for r in rows], color=color, lw=1,
                label=f"{name}: train")
        val = [r for r in rows if "val_loss" in r]
        ax.plot([offset + r["step"] for r in val], [r["val_loss"] for r in val], "o--", color=color, ms=4,
                label=f"{name}: held-out")
        if i:
            ax.axvline(offset, color="gray", lw=0.8, ls=":")
        offset += rows[-1]["step"]
    ax.set_xlabel("step (runs end to end)")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title("smallcoder offline demo: pretraining, then SFT")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--runs", nargs="+", default=["out/tiny", "out/tiny_sft"], help="run dirs, in training order")
    p.add_argument("--out", default="docs/loss.png")
    args = p.parse_args(argv)
    plot(args.runs, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
