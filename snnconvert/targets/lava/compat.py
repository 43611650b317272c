"""Python 3.11 fix for lava-nc 0.10.0: a one-shot import hook for one module.

``lava/magma/compiler/var_model.py`` gives eight dataclass fields an unhashable
``ByteEncoder()`` instance as default, which Python >= 3.11 rejects, so every lava
import fails. :func:`install` puts a finder on ``sys.meta_path`` that intercepts only
that module, compiles it from source with those defaults rewritten to
``field(default_factory=ByteEncoder)`` (same file name and line numbers), and removes
itself. It is a no-op on Python < 3.11 or when the installed lava no longer has the pattern.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import multiprocessing
import re
import sys
from types import ModuleType

TARGET = "lava.magma.compiler.var_model"
_PATTERN = re.compile(r"=\s*ByteEncoder\(\)")
_REPLACEMENT = '= __import__("dataclasses").field(default_factory=ByteEncoder)'


def patch_source(source: str) -> str:
    """Rewrite every ``= ByteEncoder()`` default into a ``default_factory`` field."""
    return _PATTERN.sub(_REPLACEMENT, source)


class _PatchedLoader(importlib.abc.SourceLoader):
    def __init__(self, fullname: str, path: str) -> None:
        self.fullname, self.path = fullname, path

    def get_filename(self, fullname: str) -> str:
        return self.path

    def get_data(self, path: str) -> bytes:
        with open(path, "rb") as f:
            data = f.read()
        if path == self.path:
            return patch_source(data.decode("utf-8")).encode("utf-8")
        return data

    def path_stats(self, path: str) -> dict:
        raise OSError("no bytecode cache for the patched module")  # forces a fresh compile


class _VarModelFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        uninstall()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None:
            return spec
        return importlib.util.spec_from_file_location(
            fullname, spec.origin, loader=_PatchedLoader(fullname, spec.origin))


_finder: _VarModelFinder | None = None


def needed() -> bool:
    """True when this interpreter needs the fix and the module is not imported yet."""
    if sys.version_info < (3, 11) or TARGET in sys.modules:
        return False
    spec = importlib.util.find_spec("lava")
    if spec is None or not spec.submodule_search_locations:
        return False
    from pathlib import Path
    for root in spec.submodule_search_locations:
        f = Path(root, "magma", "compiler", "var_model.py")
        if f.is_file():
            return bool(_PATTERN.search(f.read_text(encoding="utf-8")))
    return False


def install() -> bool:
    """Put the one-shot finder in place if needed; returns whether it was installed."""
    global _finder
    if _finder is not None:
        return True
    if not needed():
        return False
    _finder = _VarModelFinder()
    sys.meta_path.insert(0, _finder)
    return True


def uninstall() -> None:
    """Remove the finder (it also removes itself after its one use)."""
    global _finder
    if _finder is not None and _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    _finder = None


def patched_module() -> ModuleType | None:
    return sys.modules.get(TARGET)


@contextlib.contextmanager
def tolerate_fork_start_method():
    """Let Lava's import-time ``multiprocessing.set_start_method('fork')`` pass when the start
    method is already 'fork' (tqdm and others fix it by creating a lock): only for the duration
    of the import, and only for a call that would change nothing. Another method is an error."""
    current = multiprocessing.get_start_method(allow_none=True)
    if current is None:
        yield
        return
    if current != "fork":
        raise RuntimeError(f"Lava needs the 'fork' start method, but this process uses '{current}'")
    original = multiprocessing.set_start_method

    def same_method(method, force=False):
        if method == multiprocessing.get_start_method(allow_none=True):
            return None
        return original(method, force=force)

    multiprocessing.set_start_method = same_method
    try:
        yield
    finally:
        multiprocessing.set_start_method = original
