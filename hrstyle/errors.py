"""The one exception type for problems the user can fix (bad path, bad value, no data)."""


class UserError(Exception):
    """Bad input or configuration; the scripts print its message without a traceback."""
