"""Error types and exit codes shared by every room.

An `InputError` is bad input: it always renders as one line naming the file,
the line and the key, and the CLI turns it into exit code 1 without a
traceback and without writing anything.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2
EXIT_STALE_PLAN = 3
EXIT_LOCKED = 4


class SglprepError(Exception):
    """An error the CLI reports as one line, with an exit code."""

    exit_code = EXIT_ERROR

    def one_line(self) -> str:
        return str(self)


class InputError(SglprepError):
    """Invalid state file, inventory or command-line input."""

    def __init__(self, file: str | None, line: int | None, key: str | None, message: str):
        self.file, self.line, self.key, self.message = file, line, key, message
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class StalePlanError(SglprepError):
    exit_code = EXIT_STALE_PLAN


class LockTimeoutError(SglprepError):
    exit_code = EXIT_LOCKED


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived during an apply. A BaseException, so
    no `except Exception` swallows it: the running stage records it, apply
    journals it, and the process exits 128 + the signal number."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        try:
            self.name = signal.Signals(signum).name
        except ValueError:
            self.name = f"signal {signum}"
        super().__init__(f"interrupted by {self.name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
