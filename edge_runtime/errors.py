"""One error hierarchy for the whole package.

Every error that can end a program carries its exit code, so the CLI maps an
exception to an exit status in one place and systemd can tell configuration
errors (do not restart) from transient ones.
"""

from __future__ import annotations

# Documented exit codes (README "Exit codes" table mirrors this).
EXIT_OK = 0
EXIT_USAGE = 2  # bad arguments or an invalid device profile
EXIT_INPUT = 3  # catalogue, model or bundle unusable
EXIT_NOTHING_FITS = 4  # no variant meets the memory budget and latency ceiling
EXIT_READINESS = 5  # readiness checklist failed under --strict
EXIT_BENCH = 6  # edge-bench: headroom or latency outside the profile's limits
EXIT_AUTH = 7  # edge-run: the MQTT broker refused this device's credentials or identity
EXIT_TEMPFAIL = 75  # edge-run: a condition that may clear by itself (the state directory cannot be written)


class EdgeError(Exception):
    """Root of every error the package raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (fix: {self.hint})"
        return self.message


class UsageError(EdgeError):
    exit_code = EXIT_USAGE


class ProfileError(EdgeError):
    """An invalid device profile; ``problems`` lists every error found, not just the first."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, problems: list[str] | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems = problems or []

    def __str__(self) -> str:
        text = super().__str__()
        if self.problems:
            text += "\n" + "\n".join(f"  - {p}" for p in self.problems)
        return text


class InputError(EdgeError):
    exit_code = EXIT_INPUT


class CatalogueError(InputError):
    pass


class ModelError(InputError):
    pass


class BundleError(InputError):
    pass


class BudgetError(EdgeError):
    """No variant fits; ``table`` is the per-variant decision table for the report."""

    exit_code = EXIT_NOTHING_FITS

    def __init__(self, message: str, *, table: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.table = table

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\n{self.table}" if self.table else text


class ReadinessError(EdgeError):
    exit_code = EXIT_READINESS


class BenchLimitError(EdgeError):
    exit_code = EXIT_BENCH


class AuthError(EdgeError):
    """The broker refused this device for good (bad credentials, not authorised): retrying cannot fix it.

    A distinct code lets the systemd unit list it in ``RestartPreventExitStatus=`` so a revoked device does
    not hammer the broker with logins.
    """

    exit_code = EXIT_AUTH


class TemporaryError(EdgeError):
    """A startup failure that may clear on its own (e.g. the disk holding the state directory is full).

    systemd restarts the service after ``RestartSec`` (the code is not in ``RestartPreventExitStatus=``), so the
    device recovers once space returns, without a tight restart loop.
    """

    exit_code = EXIT_TEMPFAIL
