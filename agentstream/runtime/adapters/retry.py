"""The model-call retry policy, shared by the engine and any caller of an ``LLM``:
retry only transient ``ModelError``s, with full-jitter exponential backoff so
many agents hitting the same rate limit do not retry in lockstep."""

from __future__ import annotations

import asyncio
import random

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from agentstream.contracts.events import ModelResponse
from agentstream.runtime.core.errors import ModelError
from agentstream.runtime.core.ports import LLM, ModelRequest


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, ModelError) and exc.transient


async def complete_with_retry(
    llm: LLM,
    request: ModelRequest,
    attempts: int = 3,
    max_wait_s: float = 10,
    *,
    initial_wait_s: float = 0.5,
) -> ModelResponse:
    """``llm.complete`` retried on transient ``ModelError`` only.

    Full-jitter exponential backoff: many agents hitting the same rate limit
    must not retry in lockstep. The last error is re-raised unchanged.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    # The first attempt outside tenacity: an AsyncRetrying and its attempt
    # objects cost more than a fast model call (~6 % of a W1 worker's CPU), and
    # almost every call succeeds at once.
    try:
        return await llm.complete(request)
    except ModelError as exc:
        if not exc.transient or attempts == 1:
            raise
    # The waits tenacity's wait_random_exponential(initial_wait_s) would draw:
    # up to initial_wait_s after attempt 1, then doubling (hence the doubled
    # multiplier for tenacity's own attempts 1, 2, ... = ours 2, 3, ...).
    await asyncio.sleep(random.uniform(0, min(max_wait_s, initial_wait_s)))
    retrying = AsyncRetrying(
        retry=retry_if_exception(_is_transient),
        wait=wait_random_exponential(multiplier=2 * initial_wait_s, max=max_wait_s),
        stop=stop_after_attempt(attempts - 1),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await llm.complete(request)
    raise AssertionError("unreachable: tenacity re-raises the last error")
