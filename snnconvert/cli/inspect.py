"""``snnconvert inspect MODEL.onnx``: op histogram and how each node maps (exit 2 if any cannot)."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import click

from ..frontend import coverage, load_model


@click.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--nodes/--summary", default=True, show_default=True, help="List every node.")
def command(model: Path, nodes: bool) -> None:
    """Report what converts in MODEL.onnx, node by node."""
    normalized = load_model(model)
    mapping = coverage(normalized)
    ops = Counter(m.op_type for m in mapping)
    click.echo(f"{model}: {len(mapping)} node(s) after normalization")
    click.echo("ops: " + ", ".join(f"{op} {n}" for op, n in sorted(ops.items())))
    status = Counter(m.status for m in mapping)
    click.echo("mapping: " + ", ".join(f"{s} {n}" for s, n in sorted(status.items())))
    if nodes:
        width = max((len(m.node) for m in mapping), default=4)
        for m in mapping:
            click.echo(f"  {m.node:<{width}}  {m.op_type:<20} {m.status:<12} {m.detail}")
    bad = [m for m in mapping if m.status == "unsupported"]
    if bad:
        click.echo(f"{len(bad)} node(s) cannot be converted:", err=True)
        for m in bad:
            click.echo(f"  node '{m.node}' ({m.op_type}): {m.detail}", err=True)
        sys.exit(2)
