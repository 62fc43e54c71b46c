"""The one exception type users see: its message is a single line naming the problem.

The CLI prints `error: <message>` and exits 2 for these; anything else is a bug and keeps
its traceback.
"""


class SolarError(Exception):
    """A user-facing error (bad input, bad config, bad checkpoint)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
