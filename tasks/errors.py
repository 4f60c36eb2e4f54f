"""The one base class for failures a user can act on: the CLI prints them as one line, exit 1."""


class DriftloopError(Exception):
    """A failure with a one-line reason (what was wrong, and where)."""
