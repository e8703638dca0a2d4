"""The ``barkit`` command line.

Each command is a module in :mod:`barkit.commands` with a ``main`` function whose typed
signature is the command's interface (typer derives the help text from it). Modules are found
by listing the package, so there is no registry to keep in sync; they import only typer and
the standard library at top level, so ``barkit --help`` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

import barkit.commands
from barkit.errors import BarkitError

EXIT_USER_ERROR = 2


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="barkit",
        help="Modular post-training: branch experts from a base, adapt them, merge, route, upgrade.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for info in sorted(pkgutil.iter_modules(barkit.commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"barkit.commands.{info.name}")
        # a trailing underscore lets a command share a Python keyword's name (import_ -> import)
        name = info.name.rstrip("_").replace("_", "-")
        if hasattr(module, "app"):
            app.add_typer(module.app, name=name)
        else:
            app.command(name=name)(module.main)
    return app


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning user errors into one line on stderr and status 2."""
    app = build_app()
    try:
        code = app(args=argv, prog_name="barkit", standalone_mode=False)
        # typer turns Ctrl-C into click's Abort and, outside standalone mode, returns 130
        # instead of raising; commands themselves return None
        if isinstance(code, int) and code:
            if code == 130:
                print("barkit: interrupted", file=sys.stderr)
            return code
    except BarkitError as e:
        print(f"barkit: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("barkit: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # typer's own exits (--help)
        return int(e.code or 0)
    except Exception as e:  # usage errors (unknown option, bad value) carry their own exit code
        usage, exits, aborts = _click_exception_types()
        if isinstance(e, usage):
            e.show()  # type: ignore[attr-defined]
            return EXIT_USER_ERROR
        if isinstance(e, exits):
            return int(getattr(e, "exit_code", 0) or 0)
        if isinstance(e, aborts):
            return 130
        raise
    finally:
        _end_distributed()
    return 0


def _end_distributed() -> None:
    """Destroy the process group a command under ``accelerate launch`` / ``torchrun`` joined.

    Left to the interpreter's exit, the backend's threads can be torn down in the wrong order
    and abort the rank ("terminate called without an active exception"), which fails the run.
    Torch is not imported here: a command that never loaded it has no group to end.
    """
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(usage errors, exits, aborts) of click and of the click that newer typers vendor as
    ``typer._click``: which one raises depends on the installed typer, so both are caught."""
    usage: list[type] = []
    exits: list[type] = [typer.Exit]
    aborts: list[type] = [typer.Abort]
    try:
        import click

        usage.append(click.exceptions.ClickException)
        exits.append(click.exceptions.Exit)
        aborts.append(click.exceptions.Abort)
    except ImportError:
        pass
    try:
        from typer._click import exceptions as vendored  # typer >= 0.2x

        usage.append(vendored.ClickException)
    except ImportError:
        pass
    return tuple(usage), tuple(exits), tuple(aborts)


if __name__ == "__main__":
    sys.exit(main())
