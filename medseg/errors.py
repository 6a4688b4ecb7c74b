"""User-facing errors: one line that names the file at fault and the fix, no traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


class MedsegError(Exception):
    """A problem with the user's input or environment that the user can fix."""


def exit_on_user_error(fn: Callable[..., T]) -> Callable[..., T]:
    """Turns a :class:`MedsegError` raised by an entry point into ``error: ...`` and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MedsegError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
