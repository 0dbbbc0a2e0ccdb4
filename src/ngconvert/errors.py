"""Errors that reach the user as one line (exit status 2)."""


class UserError(Exception):
    """A problem with the user's input or environment.

    The message is one line that names the problem and the fix; the CLI prints it
    without a traceback and exits with status 2.
    """
