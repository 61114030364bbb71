"""The top floor: the `carbonhook` command and the one composition root (bootstrap.py)."""

from carbonhook.cli.arguments import main

__all__ = ["main"]
