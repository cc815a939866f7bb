"""`python -m pipeline.cli`: the resnetx command line."""

from pipeline.cli import cli

cli()
