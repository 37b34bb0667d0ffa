"""The local stack behind `make run`: simulator fleet + EPP + gateway, supervised in one process."""

from epp.stack.cli import main

__all__ = ["main"]
