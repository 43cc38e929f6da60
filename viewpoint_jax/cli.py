"""Shared command-line plumbing: user errors become one clear line, never a deep traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(ValueError):
    """Bad input from the user (a file, a key, an argument); the message names the problem."""


# Exceptions whose message is enough for the user; anything else is a bug and keeps its traceback.
USER_FACING = (
    UserError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    KeyError,
)


def run_main(main: Callable[[], int | None]) -> None:
    """Runs a CLI `main`, printing `error: <message>` and exiting 2 on user-facing errors."""
    try:
        code = main()
    except USER_FACING as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
