"""Errors of the `pimesh` operator commands, and the exit code each one ends with.

    PimeshError (shared.errors)
    └── CliError            an operation failed: exit code 1
        └── UsageError        a flag, argument or environment value is refused: exit code 2

Errors of the other packages (`controller.errors`, `shared.errors`) are turned into one
of these at the command boundary (`cli.options.exits`), so an operator always gets one
line that says what went wrong, never a traceback.
"""

from typing import ClassVar

from shared.errors import PimeshError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # what click uses for its own usage errors


class CliError(PimeshError):
    """An operation failed (the API or the broker answered no, or did not answer)."""

    exit_code: ClassVar[int] = EXIT_FAILED


class UsageError(CliError):
    """A value given on the command line or in a `PIMESH_*` variable is refused."""

    exit_code: ClassVar[int] = EXIT_USAGE
