"""The one exception type users see: its message is a single line naming the problem.

The CLI prints `error: <message>` and exits with the error's `exit_code` (2, bad input;
1 for DoesNotFit); anything else is a bug and keeps its traceback.
"""

import warnings


class SolarError(Exception):
    """A user-facing error (bad input, bad config, bad checkpoint)."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class SolarWarning(UserWarning):
    """A user-facing warning: a flag with no effect, a value clamped. The CLI prints it as
    one line `warning: ...`; the Python API raises it through the warnings module."""


def warn(message: str) -> None:
    warnings.warn(SolarWarning(" ".join(str(message).split())), stacklevel=2)


class DoesNotFit(SolarError):
    """A program compiled for a topology needs more memory per chip than it has
    (`solar-jax compile`): exit status 1, not 2, since the input itself was valid."""

    exit_code = 1
