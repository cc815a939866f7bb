"""The `resnetx` application: the Typer app, its global flags, and the ONE place errors become exit codes."""

from __future__ import annotations

import functools
import logging
import os
import shlex
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from resnetx.errors import ResnetxError

__all__ = ["app", "main", "cli", "handled", "console", "command_line", "hoist_global_flags", "register",
           "BUG_EXIT"]

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
BUG_EXIT = 4  # resnetx itself failed: not a check, not the input, not a missing backend
REPORT = ("report it to the resnetx maintainers with the command, its --debug output and `resnetx info`")


def _flags_bare(params: list[Any]) -> list[Any]:
    """Flags (--force, --help) take no value: their help shows no `<bool>` type as if they did."""
    for p in params:
        if getattr(p, "is_flag", False):
            p.metavar = ""
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_bare(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_bare(super().get_params(ctx))


app = typer.Typer(
    name="resnetx",
    help="A ResNet (or any image classifier) to a deployable, verified, measured artifact.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Group,
)


def console() -> Any:  # rich's console is made on first use so `--help` stays light
    from rich.console import Console

    # Piped or captured output gets full-width tables instead of rich's 80-column default; COLUMNS still rules.
    wide = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    return Console(highlight=False, width=180 if wide else None)


def _debug() -> bool:
    ctx = click_context()
    return bool(ctx and ctx.obj and ctx.obj.get("debug"))


def _framework(e: BaseException) -> bool:
    """typer's and click's own exceptions (an exit, a usage error): theirs to handle."""
    return type(e).__module__.split(".")[0] in ("typer", "click")


def handled(fn: F) -> F:
    """Map errors to one-line messages and exit codes: the ONE place that does so. An exception resnetx did not
    expect is a bug: one line that says so and names it (the traceback with --debug), exit BUG_EXIT."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ResnetxError as e:
            _fail(f"error: {e}", e.exit_code)
        except OSError as e:  # a folder that cannot be written, a full disk: the user's to fix, not a crash
            where = f" ({e.filename})" if e.filename else ""
            _fail(f"error: {e.strerror or e}{where}; check the path and its permissions and free space "
                  "(--debug shows the traceback)", 2)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as e:
            if _framework(e):
                raise
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else "(no message)"
            _fail(f"error: resnetx failed unexpectedly, a bug: {type(e).__name__}: {first} (in {_where(e)}); "
                  f"run it again with --debug for the traceback, and {REPORT}", BUG_EXIT)

    return wrapper  # type: ignore[return-value]


def _fail(message: str, code: int) -> None:
    if _debug():  # the traceback, and still the exit code scripts test for
        traceback.print_exc()
    typer.echo(message, err=True)
    raise typer.Exit(code) from None


def _where(e: BaseException) -> str:
    """'pipeline/fleet/run.py:141': the innermost frame of the project the exception passed through."""
    ours = ("pipeline", "exporters", "runtimes", "resnetx")
    every = traceback.extract_tb(e.__traceback__)
    frames = [f for f in every if any(f"{os.sep}{p}{os.sep}" in f.filename for p in ours)]
    f = frames[-1] if frames else (every or [None])[-1]
    if f is None:
        return "an unknown place"
    parts = f.filename.split(os.sep)
    start = max((i for i, p in enumerate(parts) if p in ours), default=0)
    return f"{'/'.join(parts[start:])}:{f.lineno}"


def register(panel: str, extra: str = "") -> Callable[[F], F]:
    """@register("Make"): a command of the app, shown under that heading, its errors mapped by `handled`; `extra`
    is added to its help."""

    def wrap(fn: F) -> F:
        text = " ".join(f"{fn.__doc__ or ''} {extra}".split())  # one paragraph: rich keeps a docstring's line breaks
        app.command(cls=_Command, rich_help_panel=panel, help=text)(handled(fn))
        return fn

    return wrap


def click_context() -> Any:
    try:  # newer typer vendors click (a separately installed click, e.g. Ray's, is another module)
        from typer._click.globals import get_current_context
    except ImportError:  # typer < 0.20 depends on click
        from click import get_current_context
    return get_current_context(silent=True)


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        try:
            typer.echo(f"resnetx {metadata.version('resnetx')}")
        except metadata.PackageNotFoundError:
            typer.echo("resnetx (not installed)")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_version,
                                          help="Print the version.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks and debug logs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and results.")] = False,
) -> None:
    """resnetx: export, verify, benchmark and serve image classifiers (ONNX, onnxruntime, OpenVINO, TensorRT)."""
    ctx.obj = {"debug": debug}
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    # other libraries speak at WARNING (INFO with --debug: matplotlib, torch.export, onnxscript chatter)
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(message)s", stream=sys.stderr,
                        force=True)
    for ours in ("resnetx", "pipeline", "runtimes", "exporters"):
        logging.getLogger(ours).setLevel(level)


def command_line() -> str:
    return "resnetx " + " ".join(shlex.quote(a) for a in sys.argv[1:])


GLOBAL_FLAGS = ("--debug", "--quiet", "-q")


def hoist_global_flags(argv: list[str]) -> list[str]:
    """Global flags written after the command (`resnetx verify DIR --debug`, as the error messages suggest)
    move in front of it, where click looks for them; nothing after a `--` moves."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in argv[:end] if a not in GLOBAL_FLAGS] + argv[end:]


def cli() -> None:
    """The `resnetx` console script."""
    app(args=hoist_global_flags(sys.argv[1:]), prog_name="resnetx")
