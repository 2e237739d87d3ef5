"""Errors a user can cause and fix. The CLI prints them as one clear message, no traceback."""


class UserError(Exception):
    """Bad input, bad configuration or unreachable infrastructure: the message says what to do."""
