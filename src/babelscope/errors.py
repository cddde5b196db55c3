"""One error type for every bad input: the CLI prints its message on one line and exits with code 2."""


class BabelscopeError(Exception):
    """A problem with the user's input (file, value, model, data) and what to do about it.

    The message is one line that names the offending file, line or value and says how to fix it.
    """

    exit_code = 2
