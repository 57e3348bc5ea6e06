"""The ``embedrank`` command line, on top of every other package: commands parse and call."""

from embedrank.cli.main import main

__all__ = ["main"]
