"""The one exception type users see: its message is a single line naming the problem.

The CLI prints `error: <message>` and exits 2 for these; anything else is a bug and keeps
its traceback.
"""


class SolarError(Exception):
    """A user-facing error (bad input, bad config, bad checkpoint)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class SolarWarning(UserWarning):
    """A user-facing warning: a flag with no effect, a value clamped. The CLI prints it as
    one line `warning: ...`; the Python API raises it through the warnings module."""


def warn(message: str) -> None:
    import warnings
    warnings.warn(SolarWarning(" ".join(str(message).split())), stacklevel=2)
