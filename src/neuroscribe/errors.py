"""The exception hierarchy: every error says what went wrong and where."""

from __future__ import annotations

from typing import Any


class NeuroscribeError(Exception):
    """Base class; the CLI prints these as one clear line and exits non-zero."""


class DataError(NeuroscribeError):
    """Bad input data: malformed JSONL, invalid records, mismatched lengths, non-finite values."""


class ConfigError(NeuroscribeError):
    """Bad options, a mismatched configuration on resume, an unknown model spec."""


class LLMError(NeuroscribeError):
    """A call to a language model failed for good (after retries, or not retryable).

    `fatal` marks failures that no other unit of the job can escape either (a rejected
    key, a forbidden model: 401/403): the job should stop rather than record each unit.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        fatal: bool = False,
    ):
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.fatal = fatal


class OutputError(NeuroscribeError):
    """A model answered, but its answer cannot be used (unparseable, wrong length).

    `usage` carries the tokens the unusable answers cost, so spend is still accounted.
    """

    def __init__(self, message: str, *, raw: str | None = None, usage: Any = None):
        super().__init__(message)
        self.raw = raw
        self.usage = usage


class BudgetExceeded(NeuroscribeError):
    """The job reached its --max-cost budget and stopped cleanly (resumable)."""
