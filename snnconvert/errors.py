"""Exception types that reach users.

Every error a user can cause is a :class:`SnnConvertError`; the CLI prints its
one-line ``str()`` and exits with code 2. Anything else is a bug (exit code 1).
"""
from __future__ import annotations


class SnnConvertError(Exception):
    """Base class for errors caused by the user's model, data or options."""

    def __init__(self, message: str, *, node: str | None = None, op: str | None = None,
                 hint: str | None = None) -> None:
        self.message = message
        self.node = node
        self.op = op
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = ""
        if self.node is not None:
            where = f"node '{self.node}'" + (f" ({self.op})" if self.op else "") + ": "
        text = where + self.message
        if self.hint:
            text += f" Hint: {self.hint}"
        return text


class ModelLoadError(SnnConvertError):
    """The file is missing, unreadable, not ONNX, or fails ONNX's checker."""


class UnsupportedModelError(SnnConvertError):
    """The graph holds operators or patterns that cannot be converted.

    ``problems`` lists one ``(node, op, reason)`` triple per offending node so that
    callers can report all of them at once.
    """

    def __init__(self, message: str, problems: list[tuple[str, str, str]] | None = None,
                 **kwargs) -> None:
        self.problems = problems or []
        super().__init__(message, **kwargs)


class DataError(SnnConvertError):
    """A data file (calibration, evaluation, training) is missing or malformed."""


class OptionError(SnnConvertError):
    """An option value is invalid (e.g. an unknown normalization method)."""


class TargetError(SnnConvertError):
    """A target cannot carry the network (missing dependency, unmappable layer, does not fit)."""
