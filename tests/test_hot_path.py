"""Hot-path shortcuts keep the behaviour of the slow paths they replace."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentstream.contracts.events import ModelResponse
from agentstream.runtime.adapters.retry import complete_with_retry
from agentstream.runtime.core.errors import ModelError
from agentstream.runtime.core.ports import ModelRequest


class _Flaky:
    """Fails ``failures`` times (transiently or not), then answers."""

    name = "flaky"

    def __init__(self, failures: int, transient: bool) -> None:
        self.failures = failures
        self.transient = transient
        self.calls = 0

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.calls += 1
        if self.calls <= self.failures:
            raise ModelError(f"failure {self.calls}", transient=self.transient)
        return ModelResponse(text="ok")


@settings(max_examples=60, deadline=None)
@given(attempts=st.integers(1, 4), failures=st.integers(0, 5), transient=st.booleans())
async def test_model_retries_count_as_before(attempts: int, failures: int, transient: bool) -> None:
    """The first attempt runs outside tenacity; the attempts made, the error
    raised and the answer are what tenacity alone gave: transient failures
    retried up to ``attempts`` calls, a permanent one raised at once."""
    model = _Flaky(failures, transient)
    request = ModelRequest(model="flaky", messages=())
    expect_calls = 1 if failures and not transient else min(failures + 1, attempts)
    if failures == 0 or (transient and failures < attempts):
        resp = await complete_with_retry(model, request, attempts=attempts, initial_wait_s=0.0)
        assert resp.text == "ok"
    else:
        with pytest.raises(ModelError, match=f"failure {expect_calls}$"):
            await complete_with_retry(model, request, attempts=attempts, initial_wait_s=0.0)
    assert model.calls == expect_calls
