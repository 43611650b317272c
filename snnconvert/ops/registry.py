"""The one list of op types: every entry registered by the family modules of this package."""
from __future__ import annotations

import onnx

from .base import OpEntry

REGISTRY: dict[tuple[str, str], OpEntry] = {}


def register(cls: type[OpEntry]) -> type[OpEntry]:
    """Class decorator: add one instance of ``cls`` under (domain, op_type)."""
    key = (cls.domain, cls.op_type)
    if key in REGISTRY:
        raise RuntimeError(f"op {key} registered twice")
    REGISTRY[key] = cls()
    return cls


def lookup(node: onnx.NodeProto) -> OpEntry | None:
    """The entry of ``node`` (None when the op is unknown)."""
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    return REGISTRY.get((domain, node.op_type))


def entry(op_type: str, domain: str = "") -> OpEntry | None:
    return REGISTRY.get((domain, op_type))


def known(include_refused: bool = False) -> list[OpEntry]:
    """Registered entries (by default only those the runtime can run)."""
    return [e for e in REGISTRY.values() if include_refused or e.has_kernel]
