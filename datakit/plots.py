"""Plots shared by train and evals (PNG, written atomically, no display needed)."""

from __future__ import annotations

import json
from pathlib import Path

from datakit.io import AtomicFile


def plot_loss(logs: list[Path], png: Path) -> None:
    """Training loss against step, one line per loss log (labelled by file stem when several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for log in logs:
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=log.stem)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (per trained token)")
    ax.grid(alpha=0.3)
    if len(logs) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic = AtomicFile(png)
    fig.savefig(atomic.tmp_path, dpi=100, format="png")
    plt.close(fig)
    atomic.commit()
