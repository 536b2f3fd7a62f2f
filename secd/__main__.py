"""`python -m secd` is the `secd` command."""

from secd.cli import run

run()
