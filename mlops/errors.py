"""User-facing errors: one line that names what is wrong and where."""


class MlopsError(Exception):
    """An error caused by user input or state; the CLI prints it as one line and exits non-zero."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep it to one line: a multi-line message hides the cause in logs and terminals.
        super().__init__(" ".join(str(message).split()))


class NotFoundError(MlopsError):
    """A batch, model version or other record does not exist."""


class ValidationFailed(MlopsError):
    """A batch failed its data contract and the policy does not let it through."""
