"""Errors the command line turns into one message and an exit status."""


class CommandError(Exception):
    """A user-facing failure: printed as ``privacy-gateway: error: <message>``, exit status 2."""


class CheckFailed(Exception):
    """A verification that found damage: printed as ``privacy-gateway: error: <message>``, exit status 1."""
