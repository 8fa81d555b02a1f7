"""Errors the command line turns into one message and an exit status."""

EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2


class CommandError(Exception):
    """A user-facing failure: printed as ``privacy-gateway: error: <message>``, exit status 2."""


class CheckFailed(Exception):
    """A verification that found damage: printed as ``privacy-gateway: error: <message>``, exit status 1."""
