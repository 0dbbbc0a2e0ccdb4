"""Bounded retries with exponential backoff and full jitter, shared by the network stores.

A store decides which errors are transient (throttling, 5xx, resets, timeouts); this
module only repeats the call.  When every allowed attempt failed,
:class:`RetriesExhausted` carries the last error back to the store, which turns it into a
one-line :class:`StorageUnavailable` naming the object and the operation.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ..core.errors import UserError

T = TypeVar("T")


class StorageUnavailable(UserError):
    """The server kept failing (or could not be reached) for every allowed attempt."""


class RetriesExhausted(Exception):
    """Internal: ``tries`` attempts all failed transiently; ``last`` is the final error."""

    def __init__(self, last: BaseException, tries: int):
        super().__init__(f"{tries} tries failed: {last}")
        self.last = last
        self.tries = tries


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to repeat a transiently failing request.

    Attempt ``n`` (0-based) that fails waits a uniformly random time in
    ``[0, min(max_delay, base_delay * 2**n)]`` ("full jitter") before the next one, so
    many clients throttled at once do not come back in step.
    """

    tries: int = 8
    base_delay: float = 0.25
    max_delay: float = 20.0

    def __post_init__(self) -> None:
        if self.tries < 1:
            raise UserError(f"retry tries must be at least 1, not {self.tries}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise UserError("retry delays must not be negative")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        cap = min(self.max_delay, self.base_delay * (2 ** attempt))
        return (rng or random).uniform(0.0, cap)

    def for_probe(self) -> "RetryPolicy":
        """At most three quick tries: a first contact with a server should fail fast
        (a wrong endpoint must not keep the user waiting for the full backoff)."""
        return RetryPolicy(min(self.tries, 3), min(self.base_delay, 0.25), min(self.max_delay, 1.0))


def call_with_retry(fn: Callable[[], T], *, policy: RetryPolicy,
                    is_transient: Callable[[BaseException], bool],
                    sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``, repeated while it raises a transient error, at most ``policy.tries`` times.

    Errors that are not transient propagate unchanged; after the last failed try
    :class:`RetriesExhausted` is raised (from the last error).
    """
    for attempt in range(policy.tries):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified just below
            if not is_transient(e):
                raise
            if attempt + 1 == policy.tries:
                raise RetriesExhausted(e, policy.tries) from e
            sleep(policy.delay(attempt))
    raise AssertionError("unreachable")
