"""The one exception type that reaches the user as a single `error:` line."""


class UserError(Exception):
    """A problem the user can fix (bad path, unreadable scan, bad config).

    The CLI prints ``error: <message>`` and exits with status 2, never a traceback,
    so the message must name the file, option or key at fault.
    """
