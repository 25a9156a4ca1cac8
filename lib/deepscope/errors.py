"""The one exception type that the CLI turns into a single error line and exit code 2."""


class UserError(Exception):
    """Bad input from the user (arguments, job file, missing weights): say what and where, no traceback."""
