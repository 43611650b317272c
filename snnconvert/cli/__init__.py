"""Command-line interface: ``snnconvert MODEL.onnx ...`` (= ``snnconvert convert``), ``eval``,
``inspect``, ``report``, ``finetune``. Each command lives in its own module and only composes the
Python API. User errors print one line and exit 2; internal errors exit 1.
"""
from __future__ import annotations

import os
import sys

import click

from .. import distributed
from ..errors import SnnConvertError

COMMAND_MODULES = ("convert", "evaluate", "inspect", "report", "finetune")


class DefaultGroup(click.Group):
    """A group whose first argument, when it is not a command, is handed to ``convert``."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return "convert", self.commands["convert"], args
        return super().resolve_command(ctx, args)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="snnconvert")
@click.option("--threads", type=click.IntRange(min=1), default=None, envvar="SNNCONVERT_THREADS",
              help="CPU threads for torch and onnxruntime (default: torch's choice).")
def cli(threads: int | None) -> None:
    """Compile a trained ANN (ONNX) into a spiking network.

    \b
    snnconvert MODEL.onnx --calib C.npz -T 32 --target torch   convert (shorthand)
    snnconvert eval MODEL --data D.npz --timesteps 4,8,32       accuracy vs T
    snnconvert inspect MODEL.onnx                               what converts, what does not
    """
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _register() -> None:
    import importlib

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        cli.add_command(module.command)


_register()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (e.g. what the NIR target cannot carry) as one 'warning:' line each."""
    click.echo(f"warning: {message}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and map errors to exit codes (2 user error, 1 internal)."""
    try:
        code = _exit_code(argv)
    finally:
        distributed.shutdown()
    if distributed.launched():
        distributed.end_process(code)
    sys.exit(code)


def _exit_code(argv: list[str] | None) -> int:
    """Run the command; its exit code, with a one-line message for each error."""
    import warnings

    warnings.showwarning = _show_warning
    try:
        cli.main(args=argv, prog_name="snnconvert", standalone_mode=False)
    except SnnConvertError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return 2
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:  # a command that ends itself: a code, or a message (exit 1, as Python's)
        if isinstance(exc.code, int) or exc.code is None:
            return exc.code or 0
        click.echo(str(exc.code), err=True)
        return 1
    except Exception as exc:
        if os.environ.get("SNNCONVERT_DEBUG"):
            raise
        click.echo(f"internal error: {type(exc).__name__}: {exc} (set SNNCONVERT_DEBUG=1 for a traceback)",
                   err=True)
        return 1
    return 0
