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


def accuracy_vs_time(curves, path: str | os.PathLike, title: str = "", target: float | None = None) -> None:
    """Write a PNG of validation accuracy against training time, wall clock left and CPU time right,
    one line per curve (:class:`snnconvert.finetune.curve.Curve`: its offset, e.g. ANN training and
    conversion, is part of its time axis). ``target``: an accuracy drawn as a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for ax, clock in zip(axes, ("wall", "cpu")):
        for curve in curves:
            times = [curve.time(p, clock) for p in curve.points]
            accs = [100 * p.accuracy for p in curve.points]
            line, = ax.plot(times, accs, "o-", ms=3, label=curve.name)
            offset = curve.offset_wall_s if clock == "wall" else curve.offset_cpu_s
            if offset > 0:
                ax.axvspan(0, offset, color=line.get_color(), alpha=0.08)
            if target is not None:
                reach = curve.time_to_reach(target, clock)
                if reach is not None:
                    ax.axvline(reach, color=line.get_color(), lw=1, ls="--", alpha=0.7)
        if target is not None:
            ax.axhline(100 * target, color="k", lw=1, ls=":", label=f"target {100 * target:.2f} %")
        ax.set_xlabel(f"{'wall-clock' if clock == 'wall' else 'CPU'} seconds from the start")
        ax.set_ylabel("test accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    accs = [100 * p.accuracy for c in curves for p in c.points] or [0.0, 100.0]
    for ax in axes:
        ax.set_ylim(max(0.0, min(accs) - 2), min(100.0, max(accs) + 1.5))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
