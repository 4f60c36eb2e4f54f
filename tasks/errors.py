"""The one base class for failures a user can act on: the CLI prints them as one line, exit 1."""

import logging

# The loggers Prefect's engines report a failed flow or task run on, with its traceback
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class DriftloopError(Exception):
    """A failure with a one-line reason (what was wrong, and where)."""


class DataError(DriftloopError, ValueError):
    """The data cannot be read; the message names the file and the problem in one line."""


class _WithoutTraceback(logging.Filter):
    """Keeps the message of a run that failed with a DriftloopError, drops its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, DriftloopError):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_expected_failures() -> None:
    """Log a run that fails with a DriftloopError (bad data, a rejected config) by its message
    alone, in the terminal and in the Prefect UI: its traceback says nothing a user can act on.
    Other exceptions keep their tracebacks. Called by entry points, never at import."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _WithoutTraceback) for f in logger.filters):
            logger.addFilter(_WithoutTraceback())
