"""The resnetx command line: thin commands over option groups declared once (pipeline/cli/options.py), grouped by job:
make (train, export, run), check (verify, bench, info, predict), ship (triton, deepstream) and fleet. A command
parses, calls one pipeline function and prints (pipeline/cli/show.py, pipeline/cli/tables.py); errors become exit
codes in one place (pipeline/cli/app.py)."""

from __future__ import annotations

from pipeline.cli import check, fleet, make, ship
from pipeline.cli.app import app, cli, handled, hoist_global_flags, main, register

__all__ = ["app", "cli", "main", "handled", "hoist_global_flags"]

# the commands, in the order of the help's panels
for _panel, _commands in (("Make", (make.train, make.export, make.run)),
                          ("Check", (check.verify, check.bench, check.info, check.predict)),
                          ("Ship", (ship.triton, ship.deepstream)), ("Fleet", (fleet.fleet,))):
    for _fn in _commands:
        register(_panel)(_fn)
