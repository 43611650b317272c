"""``snnconvert inspect MODEL.onnx [--target T]``: op histogram and how each node maps, and with
``--target`` whether that target can hold it (exit 2 if any node cannot convert or be held)."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import click

from .. import api
from ..frontend import coverage, load_model
from ..targets import TARGETS


@click.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--nodes/--summary", default=True, show_default=True, help="List every node.")
@click.option("--target", type=click.Choice(TARGETS), default=None,
              help="Also answer, per node, whether this target can hold it (before any compile).")
def command(model: Path, nodes: bool, target: str | None) -> None:
    """Report what converts in MODEL.onnx, node by node."""
    normalized = load_model(model)
    mapping = coverage(normalized)
    held = {s.name: s.verdict for s in api.target_support(normalized, target, mapping)} if target else {}
    ops = Counter(m.op_type for m in mapping)
    click.echo(f"{model}: {len(mapping)} node(s) after normalization")
    click.echo("ops: " + ", ".join(f"{op} {n}" for op, n in sorted(ops.items())))
    status = Counter(m.status for m in mapping)
    click.echo("mapping: " + ", ".join(f"{s} {n}" for s, n in sorted(status.items())))
    if target:
        verdicts = Counter(v.status for v in held.values())
        click.echo(f"target {target}: " + ", ".join(f"{s} {n}" for s, n in sorted(verdicts.items())))
    if nodes:
        width = max((len(m.node) for m in mapping), default=4)
        for m in mapping:
            click.echo(f"  {m.node:<{width}}  {m.op_type:<20} {m.status:<12} {m.detail}")
            if m.node in held:
                click.echo(f"  {'':<{width}}  {'':<20} {target + ':':<12} {held[m.node].status}: "
                           f"{held[m.node].detail}")
    bad = [m for m in mapping if m.status == "unsupported"]
    if bad:
        click.echo(f"{len(bad)} node(s) cannot be converted:", err=True)
        for m in bad:
            click.echo(f"  node '{m.node}' ({m.op_type}): {m.detail}", err=True)
    refused = [(name, v) for name, v in held.items() if not v.ok]
    if refused:
        op = {m.node: m.op_type for m in mapping}
        click.echo(f"{len(refused)} node(s) the {target} target cannot hold:", err=True)
        for name, v in refused:
            click.echo(f"  node '{name}' ({op[name]}): {v.detail}", err=True)
    if bad or refused:
        sys.exit(2)
