"""The ``nashir`` command line (click). Each sub-command lives in ``nashir/commands/<name>.py`` and is
imported only when used, so ``nashir --help`` stays fast and torch is loaded only by commands
that need it.

Errors: a :class:`~nashir.errors.NashirError` is printed as ``error: <message>`` without a
traceback and the process exits with its ``exit_code`` (2 for bad input, 1 otherwise); a
``MemoryError`` is printed as one line and exits 1. Set ``NASHIR_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from nashir.errors import NashirError

# name -> (module, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "show": ("nashir.commands.show", "show", "Print a model's graph, per-node table and totals."),
    "morph": ("nashir.commands.morph", "morph", "Apply network morphisms to an ONNX model."),
    "passes": ("nashir.commands.morph", "passes_cmd", "List the registered morphism passes."),
    "train": ("nashir.commands.train", "train", "Train an ONNX model with SGDR."),
    "eval": ("nashir.commands.train", "eval_cmd", "Evaluate an ONNX model on a data set."),
    "search": ("nashir.commands.search", "search", "Run a NASH architecture search."),
    "report": ("nashir.commands.search", "report", "Write plots and a markdown report for a run."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        mod, attr, _ = COMMANDS[name]
        try:
            return getattr(importlib.import_module(mod), attr)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("nashir"):
                @click.command(name=name, help=COMMANDS[name][2] + " (not available in this build)")
                def _missing():
                    raise click.ClickException(f"the {name!r} command is not available in this build")

                return _missing
            raise

    def format_commands(self, ctx, formatter):
        rows = [(n, COMMANDS[n][2]) for n in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nashir")
def cli():
    """nashir: NASH architecture search by hill climbing over network morphisms, on a graph IR.

    Morph ONNX models function-preservingly, train them with SGDR, and search architectures.
    """


def _command_name(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return next((a for a in args if a in COMMANDS), "")


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 ok, 1 failure, 2 bad input).

    A ``MemoryError`` anywhere becomes one line and exit 1 (outputs are written atomically, so nothing
    half-written is left behind)."""
    out_of_memory = False
    try:
        cli.main(args=argv, prog_name="nashir", standalone_mode=False)
    except MemoryError:
        if os.environ.get("NASHIR_DEBUG"):
            raise
        out_of_memory = True   # reported below, once the frames holding the memory are gone
    except NashirError as e:
        if os.environ.get("NASHIR_DEBUG"):
            raise
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except OSError as e:   # a path the checks did not foresee (/proc for root): one line, no traceback
        if os.environ.get("NASHIR_DEBUG"):
            raise
        where = f" {e.filename}" if e.filename else ""
        click.echo(f"error: cannot access{where}: {e.strerror or e} ({type(e).__name__}); choose another "
                   "path or fix its permissions (NASHIR_DEBUG=1 shows the traceback)", err=True)
        return 1
    except click.UsageError as e:   # a bad flag or argument: one line, like every other error
        where = e.ctx.command_path if e.ctx is not None else "nashir"
        msg = " ".join(e.format_message().split())
        click.echo(f"error: {msg} (`{where} --help` lists the options)", err=True)
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    if out_of_memory:
        name = _command_name(argv)
        click.echo(
            f"error: out of memory{f' in `nashir {name}`' if name else ''} (MemoryError); no output was left "
            "half-written (outputs are replaced only once complete): use smaller sizes or free memory "
            "(NASHIR_DEBUG=1 shows the traceback)",
            err=True,
        )
        return 1
    return 0


def _entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _entry()
