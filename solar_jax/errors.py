"""The one exception type users see: its message is a single line naming the problem.

The CLI prints `error: <message>` and exits with the error's `exit_code` (2, bad input;
1 for DoesNotFit); anything else is a bug and keeps its traceback.
"""


class SolarError(Exception):
    """A user-facing error (bad input, bad config, bad checkpoint)."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class DoesNotFit(SolarError):
    """A program compiled for a topology needs more memory per chip than it has
    (`solar-jax compile`): exit status 1, not 2, since the input itself was valid."""

    exit_code = 1
