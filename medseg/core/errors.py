"""User-facing errors: one line that names the file at fault and the fix, no traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


class MedsegError(Exception):
    """A problem with the user's input or environment that the user can fix."""


def exit_on_user_error(fn: Callable[..., T]) -> Callable[..., T]:
    """Turns a :class:`MedsegError` raised by an entry point into ``error: ...`` and exit code 2.

    In a Hydra multirun (sweeps) the error is printed and re-raised instead, so the sweeper marks
    that one job failed and goes on with the others.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            user_error = user_error_in(err)
            if user_error is None:
                raise
            print(f"error: {user_error}", file=sys.stderr)
            if _in_multirun():
                raise
            sys.exit(2)

    return wrapper


def user_error_in(err: BaseException) -> MedsegError | None:
    """The :class:`MedsegError` behind ``err``, if any: Hydra's ``instantiate`` wraps what a
    ``_target_`` raises (a datalist reading a broken ``dataset.json``) in its own exception."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, MedsegError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
