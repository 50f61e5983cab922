"""Hot-path shortcuts keep the behaviour of the slow paths they replace."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg

from agentstream.contracts.events import ModelResponse
from agentstream.runtime.adapters.retry import complete_with_retry
from agentstream.runtime.core.errors import ModelError
from agentstream.runtime.core.ports import ModelRequest
from agentstream.runtime.execution.consumer import stream_seq
from agentstream.runtime.observability.metrics import AttributeSets, _LiteInstrument, keyed
from agentstream.runtime.observability.trace_context import _TRACEPARENT, Ctx, parse_traceparent


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


# --------------------------------------------------------------------------- trace context parsing, cached

_HEXISH = st.text(alphabet="0123456789abcdefABF-xz", min_size=0, max_size=60)
_FIFTY_FIVE = st.text(alphabet="0123456789abcdef-A ", min_size=55, max_size=55)


def _reference_parse(value: str | None, tracestate: str | None = None) -> Ctx | None:
    """parse_traceparent as it was: the regex alone."""
    m = _TRACEPARENT.fullmatch(value) if value else None
    if m is None:
        return None
    version, tid, sid, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or tid == "0" * 32 or sid == "0" * 16:
        return None
    return Ctx(tid, sid, int(flags, 16), tracestate or "")


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(_HEXISH, _FIFTY_FIVE, st.builds(
    lambda v, t, s, f, rest: f"{v}-{t}-{s}-{f}{rest}",
    st.sampled_from(["00", "01", "ff", "0g"]), st.text("0123456789abcdef", min_size=31, max_size=33),
    st.text("0123456789abcdef", min_size=15, max_size=17), st.sampled_from(["00", "01", "ff"]),
    st.sampled_from(["", "-x", "-"])), st.sampled_from([
        "00-" + "0" * 32 + "-" + "1" * 16 + "-01", "00-" + "1" * 32 + "-" + "0" * 16 + "-01",
        "ff-" + "1" * 32 + "-" + "1" * 16 + "-01", "00-" + "1" * 32 + "-" + "1" * 16 + "-0A"])),
    state=st.sampled_from([None, "", "k=v"]))
def test_traceparent_parsing_answers_as_the_regex(value: str, state: str | None) -> None:
    """The fast path for the 55-character form accepts exactly what the W3C
    regex does (lowercase hex, no all-zero ids, not version ff)."""
    assert parse_traceparent(value, state) == _reference_parse(value, state)


# --------------------------------------------------------------------------- metric attribute sets

def test_records_with_kept_keys_make_the_same_series() -> None:
    plain = _LiteInstrument("h", "s", "", (0.1, 1.0))
    kept = _LiteInstrument("h", "s", "", (0.1, 1.0))
    sets = AttributeSets(limit=3)
    for i in range(20):
        attrs = {"tenant": f"t{i % 5}", "user": f"u{i % 2}"}
        plain.record(i / 10, attrs)
        ident = (attrs["tenant"], attrs["user"])
        a, key = sets.get(ident) or sets.put(ident, keyed(dict(attrs)))
        kept.record(i / 10, a, key)
        assert len(sets._sets) <= 3
    assert sorted(plain.points()) == sorted(kept.points())


# --------------------------------------------------------------------------- stream sequence from the ack subject

_TOKEN = st.text(alphabet="abcXYZ019_-", min_size=1, max_size=8)
_NUM = st.integers(0, 10**12).map(str)


@settings(max_examples=300, deadline=None)
@given(reply=st.one_of(
    st.builds(lambda s, c, d, q, cq, t, p: f"$JS.ACK.{s}.{c}.{d}.{q}.{cq}.{t}.{p}",
              _TOKEN, _TOKEN, _NUM, _NUM, _NUM, _NUM, _NUM),
    st.builds(lambda dom, acc, s, c, d, q, cq, t, p, r: f"$JS.ACK.{dom}.{acc}.{s}.{c}.{d}.{q}.{cq}.{t}.{p}.{r}",
              st.sampled_from(["_", "hub"]), _TOKEN, _TOKEN, _TOKEN, _NUM, _NUM, _NUM, _NUM, _NUM, _TOKEN),
    st.text(alphabet="$JSACK.0123456789abc", max_size=40), st.just("")))
def test_stream_seq_reads_what_nats_py_metadata_reads(reply: str) -> None:
    msg = Msg(_client=None, subject="s", reply=reply, data=b"")  # type: ignore[arg-type]
    try:
        expected: int | None = int(msg.metadata.sequence.stream)
    except Exception:  # noqa: BLE001 - nats-py: not a JetStream message
        expected = None
    assert stream_seq(msg) == expected
