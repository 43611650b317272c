"""Plots a person would rather look at than read: accuracy vs timesteps."""
from __future__ import annotations

import io
import os

from .ir import atomic_write_bytes


def accuracy_vs_timesteps(report, path: str | os.PathLike, title: str = "") -> None:
    """Write a PNG of SNN accuracy and ANN agreement against T, with the ANN as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [r.timesteps for r in report.rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if report.rows and report.rows[0].accuracy is not None:
        ax.plot(ts, [100 * r.accuracy for r in report.rows], "o-", label="SNN accuracy")
    ax.plot(ts, [100 * r.agreement for r in report.rows], "s--", alpha=0.7, label="agreement with ANN")
    if report.ann_accuracy is not None:
        ax.axhline(100 * report.ann_accuracy, color="k", lw=1, ls=":", label="ANN accuracy")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ts, [str(t) for t in ts])
    ax.set_xlabel("timesteps T")
    ax.set_ylabel("%")
    ax.set_title(title or f"accuracy vs timesteps ({report.target} target)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
