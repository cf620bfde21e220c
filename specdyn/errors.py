"""User-facing errors: one line, a named file, a hint, and a documented exit code.

Raise `SpecdynError` for anything a user can fix (bad path, unsafe pickle, store in use); the CLI prints
`error: <message>` on stderr and exits with `code`. Bugs stay ordinary exceptions with tracebacks.
"""

from pathlib import Path

# Exit codes (documented in README.md). 2 is typer's own usage error.
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_CHECKPOINTS = 3
EXIT_UNSAFE_PICKLE = 4
EXIT_STORE_BUSY = 5
EXIT_NOT_FOUND = 6


class SpecdynError(Exception):
    """An error caused by the user's input, reported as one line without a traceback."""

    def __init__(self, message: str, code: int = EXIT_ERROR):
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


class CheckpointError(SpecdynError):
    """A checkpoint that cannot be read (truncated, corrupt, not a checkpoint); the message names the file."""


class UnsafePickleError(SpecdynError):
    """A pickle that needs globals outside the inert allowlist; the message names the file and the globals."""

    def __init__(self, path, globals_: list[str]):
        self.path = Path(path)
        self.globals = sorted(set(globals_))
        super().__init__(
            f"{path}: refusing to unpickle {', '.join(self.globals) or 'unknown globals'} (a pickle can run "
            "arbitrary code); if you trust this file, rerun with --trust-pickle",
            code=EXIT_UNSAFE_PICKLE,
        )
