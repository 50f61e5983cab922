"""Property tests of the wire contract: events, codec, subjects and the JSON schema.

Deterministic (``derandomize=True``) so a failure reproduces on every run.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentstream.contracts import codec, events, subjects
from agentstream.contracts.events import ALL_EVENT_TYPES, TAG_FIELD, TaskSubmitted
from agentstream.contracts.schema import dumps, json_schema
from agentstream.contracts.telemetry import SpanBatch, SpanRecord

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "docs" / "events.schema.json"

DETERMINISTIC = settings(max_examples=60)  # on top of conftest's deterministic profile

DECODERS: dict[str, codec.Decoder[Any]] = {
    "any_event": codec.any_event,
    "task_submitted": codec.task_submitted,
    "agent_inbox": codec.agent_inbox,
    "tool_call": codec.tool_call,
    "task_result": codec.task_result,
    "task_event": codec.task_event,
}

# --------------------------------------------------------------------------- strategies

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FINITE = st.floats(allow_nan=False, allow_infinity=False)

json_scalars = st.none() | st.booleans() | INT64 | FINITE | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy for a field annotation, restricted to values JSON can round-trip:
    finite floats (msgspec writes inf/nan as null), 64-bit ints, JSON values for Any."""
    if tp is Any:
        return json_values
    if tp is type(None) or tp is None:
        return st.none()
    if tp is bool:
        return st.booleans()
    if tp is int:
        return INT64
    if tp is float:
        return FINITE
    if tp is str:
        return st.text(max_size=30)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return struct_strategy(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(strategy_for(a) for a in args))
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy_for(args[0]), max_size=4).map(tuple)
        return st.tuples(*(strategy_for(a) for a in args))
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=4)
    if origin is dict:
        return st.dictionaries(strategy_for(args[0]), strategy_for(args[1]), max_size=4)
    return st.from_type(tp)  # anything new: let hypothesis try, and fail loudly if it can't


_STRUCT_STRATEGIES: dict[type, st.SearchStrategy[Any]] = {}


def struct_strategy(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    """``st.builds`` over every field (required and defaulted) with explicit strategies."""
    if cls not in _STRUCT_STRATEGIES:
        _STRUCT_STRATEGIES[cls] = st.builds(
            cls, **{f.name: strategy_for(f.type) for f in msgspec.structs.fields(cls)}
        )
    return _STRUCT_STRATEGIES[cls]


any_event = st.one_of(*(struct_strategy(cls) for cls in ALL_EVENT_TYPES))


def tag_of(cls: type[msgspec.Struct]) -> str:
    return cls.__struct_config__.tag  # type: ignore[return-value]


TAGS = [tag_of(cls) for cls in ALL_EVENT_TYPES]
TAG_RE = re.compile(r"^agentstream\.[a-z_]+(\.[a-z_]+)*\.v[1-9][0-9]*$")


# --------------------------------------------------------------------------- round trip


def test_every_event_type_has_a_distinct_versioned_tag() -> None:
    assert len(set(TAGS)) == len(TAGS)
    for cls, tag in zip(ALL_EVENT_TYPES, TAGS):
        assert isinstance(tag, str) and TAG_RE.match(tag), (cls, tag)
        assert cls.__struct_config__.tag_field == TAG_FIELD
    assert set(ALL_EVENT_TYPES) == set(typing.get_args(events.AnyEvent))


def _mentions_any(tp: Any) -> bool:
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):  # nested (PlanProposed.steps[].args)
        return any(_mentions_any(f.type) for f in msgspec.structs.fields(tp))
    return tp is Any or any(_mentions_any(a) for a in typing.get_args(tp))


@pytest.mark.parametrize("cls", ALL_EVENT_TYPES, ids=lambda c: c.__name__)
def test_from_type_builds_every_event(cls: type[msgspec.Struct]) -> None:
    """Hypothesis' own inference (``from_type``/``builds``) can build every event once
    Any-typed fields get JSON values, and whatever it builds encodes to a tagged object.

    Fields with a mutable default (``metadata: dict = {}``) need explicit strategies
    too: msgspec exposes that default in ``__signature__`` as a ``Factory`` object,
    which hypothesis would otherwise pass through verbatim."""
    explicit = {
        f.name: strategy_for(f.type)
        for f in msgspec.structs.fields(cls)
        if _mentions_any(f.type) or f.default_factory is not msgspec.NODEFAULT
    }
    strategy = st.builds(cls, **explicit) if explicit else st.from_type(cls)

    @settings(DETERMINISTIC, max_examples=20)
    @given(strategy)
    def check(ev: Any) -> None:
        assert isinstance(ev, cls)
        assert json.loads(codec.encode(ev))[TAG_FIELD] == tag_of(cls)

    check()


@pytest.mark.parametrize("cls", ALL_EVENT_TYPES, ids=lambda c: c.__name__)
def test_round_trip(cls: type[msgspec.Struct]) -> None:
    @DETERMINISTIC
    @given(struct_strategy(cls))
    def check(ev: Any) -> None:
        buf = codec.encode(ev)
        back = codec.any_event.decode(buf)
        assert type(back) is cls
        assert back == ev
        # builtins form agrees with the wire form
        assert json.loads(buf) == json.loads(json.dumps(msgspec.to_builtins(ev)))
        # and every family decoder that lists this type decodes it too
        for name, dec in DECODERS.items():
            if _family_accepts(name, cls):
                assert dec.decode(buf) == ev
            else:
                with pytest.raises(codec.DecodeError):
                    dec.decode(buf)

    check()


_FAMILIES: dict[str, Any] = {
    "any_event": events.AnyEvent,
    "task_submitted": events.TaskSubmitted,
    "agent_inbox": events.AgentInboxEvent,
    "tool_call": events.ToolCallRequested,
    "task_result": events.TaskResult,
    "task_event": events.TaskEvent,
}


def _family_accepts(name: str, cls: type) -> bool:
    fam = _FAMILIES[name]
    return cls is fam or cls in typing.get_args(fam)


@DETERMINISTIC
@given(any_event)
def test_encoded_json_carries_versioned_tag(ev: Any) -> None:
    obj = json.loads(codec.encode(ev))
    assert isinstance(obj, dict)
    assert obj[TAG_FIELD] == tag_of(type(ev))
    assert TAG_RE.match(obj[TAG_FIELD])
    assert re.search(r"\.v\d+$", obj[TAG_FIELD])


# --------------------------------------------------------------------------- garbage in


# Regression: msgspec raises UnicodeDecodeError (invalid UTF-8 inside a JSON
# string), UnicodeEncodeError (a str body with a lone surrogate) and RecursionError
# (~1000 levels of nesting, a ~1 kB poison message) besides DecodeError; the codec
# must turn all of them into DecodeError so consumers dead-letter, not crash.


def _decode_or_decode_error(dec: codec.Decoder[Any], buf: bytes | bytearray | memoryview | str) -> None:
    try:
        dec.decode(buf)
    except codec.DecodeError:
        pass  # the only exception a consumer has to catch


@pytest.mark.parametrize("name", DECODERS)
def test_random_bytes_decode_or_raise_decode_error(name: str) -> None:
    dec = DECODERS[name]

    @DETERMINISTIC
    @given(st.binary(max_size=200))
    def check(buf: bytes) -> None:
        _decode_or_decode_error(dec, buf)
        _decode_or_decode_error(dec, bytearray(buf))
        _decode_or_decode_error(dec, memoryview(buf))

    check()


@pytest.mark.parametrize("name", DECODERS)
def test_random_json_decode_or_raise_decode_error(name: str) -> None:
    dec = DECODERS[name]
    # objects that look like events (a real tag plus random fields) reach the validators
    event_like = st.builds(
        lambda tag, extra: {**extra, TAG_FIELD: tag},
        st.sampled_from(TAGS + ["agentstream.task.submitted.v999", "", "nope"]),
        st.dictionaries(
            st.sampled_from(sorted({f.name for c in ALL_EVENT_TYPES for f in msgspec.structs.fields(c)}))
            | st.text(max_size=8),
            json_values,
            max_size=12,
        ),
    )

    @DETERMINISTIC
    @given(json_values | event_like, st.booleans())
    def check(value: Any, as_text: bool) -> None:
        text = json.dumps(value)
        _decode_or_decode_error(dec, text if as_text else text.encode())

    check()


@pytest.mark.parametrize("name", DECODERS)
def test_truncated_and_mutated_events_decode_or_raise_decode_error(name: str) -> None:
    dec = DECODERS[name]
    # Cuts and insertions at character boundaries, with ASCII junk, so the body stays
    # valid UTF-8: invalid UTF-8 is test_invalid_unicode_raises_decode_error.
    ascii_junk = st.text(alphabet=st.characters(max_codepoint=127), min_size=1, max_size=3)

    @DETERMINISTIC
    @given(any_event, st.integers(min_value=0), ascii_junk)
    def check(ev: Any, cut: int, junk: str) -> None:
        text = codec.encode(ev).decode()
        i = cut % (len(text) + 1)
        _decode_or_decode_error(dec, text[:i].encode())
        _decode_or_decode_error(dec, (text[:i] + junk + text[i:]).encode())

    check()


def test_deeply_nested_json_raises_decode_error() -> None:
    payload = b'{"type":"agentstream.tool.call.completed.v1","result":' + b"[" * 100_000
    for dec in DECODERS.values():
        for buf in (b"[" * 100_000, b'{"a":' * 100_000, payload):
            with pytest.raises(codec.DecodeError):
                dec.decode(buf)


def test_invalid_unicode_raises_decode_error() -> None:
    for dec in DECODERS.values():
        with pytest.raises(codec.DecodeError):
            dec.decode('{"type":"\ud800"}')  # str body with a lone surrogate
        with pytest.raises(codec.DecodeError):
            dec.decode(b'{"type":"\x80"}')  # invalid UTF-8 inside a JSON string


# --------------------------------------------------------------------------- evolution


@DETERMINISTIC
@given(any_event, st.data())
def test_unknown_extra_fields_are_tolerated(ev: Any, data: st.DataObject) -> None:
    obj = json.loads(codec.encode(ev))
    known = {f.name for f in msgspec.structs.fields(type(ev))} | {TAG_FIELD}
    extra = data.draw(
        st.dictionaries(st.text(max_size=12).filter(lambda k: k not in known), json_values, min_size=1, max_size=5)
    )
    newer = {**obj, **extra}
    # put the extras first as well as last: order must not matter
    for order in (newer, {**extra, **obj}):
        buf = json.dumps(order).encode()
        assert codec.any_event.decode(buf) == ev
        assert codec.any_event.decode(buf.decode()) == ev


def test_minimal_task_decodes_with_documented_defaults() -> None:
    buf = b'{"type":"agentstream.task.submitted.v1","agent":"support","input":"hi"}'
    for dec in (codec.any_event, codec.task_submitted, codec.task_event):
        task = dec.decode(buf)
        assert isinstance(task, TaskSubmitted)
        assert task == TaskSubmitted(agent="support", input="hi")
        assert task.agent == "support"
        assert task.input == "hi"
        assert task.task_id == ""  # runtime derives seq-<n>
        assert task.tenant_id == "default"
        assert task.user_id == "anonymous"
        assert task.conversation_id == ""
        assert task.agent_version == ""
        assert task.metadata == {}
        assert task.submitted_at == 0.0
        assert task.max_steps is None
        assert task.deadline_s is None
        assert task.max_tokens is None
        assert task.max_cost_usd is None


@pytest.mark.parametrize(
    "buf",
    [
        b'{"type":"agentstream.task.submitted.v1","input":"hi"}',  # no agent
        b'{"type":"agentstream.task.submitted.v1","agent":"support"}',  # no input
        b'{"type":"agentstream.task.submitted.v2","agent":"support","input":"hi"}',  # unknown version
        b'{"type":"agentstream.task.completed.v1","agent":"support","input":"hi"}',  # other event
        b'{"type":"agentstream.task.submitted.v1","agent":1,"input":"hi"}',  # wrong type
        b'{"type":"agentstream.task.submitted.v1","agent":"a","input":"hi","max_steps":1.5}',
        b'{"type":"agentstream.task.submitted.v1","agent":"a","input":"hi","metadata":{"k":1}}',
        b'["agentstream.task.submitted.v1","support","hi"]',
        b"",
        b"null",
    ],
)
def test_invalid_tasks_raise_decode_error(buf: bytes) -> None:
    for dec in (codec.task_submitted, codec.any_event, codec.task_event):
        with pytest.raises(codec.DecodeError):
            dec.decode(buf)


def test_untagged_task_needs_the_typed_decoder() -> None:
    """msgspec checks the tag of a lone tagged Struct only if present, so the
    task_submitted decoder accepts an untagged body; union decoders need the tag."""
    buf = b'{"agent":"support","input":"hi"}'
    assert codec.task_submitted.decode(buf) == TaskSubmitted(agent="support", input="hi")
    for dec in (codec.any_event, codec.task_event):
        with pytest.raises(codec.DecodeError):
            dec.decode(buf)


def test_non_finite_floats_are_not_wire_safe() -> None:
    """Documented caveat: JSON has no inf/nan; msgspec writes null, which a float
    field rejects. Producers must not put non-finite floats in events."""
    ev = TaskSubmitted(agent="a", input="i", deadline_s=math.inf)
    assert b'"deadline_s":null' in codec.encode(ev)
    back = codec.any_event.decode(codec.encode(ev))
    assert isinstance(back, TaskSubmitted)
    assert back.deadline_s is None  # Optional: silently None
    ev2 = TaskSubmitted(agent="a", input="i", submitted_at=math.nan)
    with pytest.raises(codec.DecodeError):
        codec.any_event.decode(codec.encode(ev2))


# --------------------------------------------------------------------------- subjects

TOKEN_CHARS = "abcXYZ019_-"
BAD_CHARS = ".* >\t/\x00é"


@DETERMINISTIC
@given(st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=128))
def test_check_token_accepts_tokens(value: str) -> None:
    assert subjects.is_token(value)
    assert subjects.check_token("agent", value) == value


@DETERMINISTIC
@given(
    st.text(alphabet=TOKEN_CHARS, max_size=60),
    st.text(alphabet=BAD_CHARS, min_size=1, max_size=3),
    st.text(alphabet=TOKEN_CHARS, max_size=60),
)
def test_check_token_rejects_forbidden_characters(head: str, bad: str, tail: str) -> None:
    value = head + bad + tail
    assert not subjects.is_token(value)
    with pytest.raises(ValueError, match="invalid agent"):
        subjects.check_token("agent", value)


@DETERMINISTIC
@given(st.text(alphabet=TOKEN_CHARS, min_size=129, max_size=300))
def test_check_token_rejects_too_long(value: str) -> None:
    with pytest.raises(ValueError):
        subjects.check_token("tool", value)


@pytest.mark.parametrize("value", ["", ".", " ", "*", ">", "a.b", "a b", "a*", "a>", "x" * 129])
def test_check_token_rejects_examples(value: str) -> None:
    with pytest.raises(ValueError):
        subjects.check_token("task_id", value)


def test_check_token_rejects_trailing_newline() -> None:
    with pytest.raises(ValueError):
        subjects.check_token("agent", "support\n")


# --------------------------------------------------------------------------- JSON schema


def test_checked_in_schema_is_current() -> None:
    assert SCHEMA_FILE.exists(), "run: python -m agentstream.contracts.schema"
    text = SCHEMA_FILE.read_text(encoding="utf-8")
    assert json.loads(text) == json.loads(dumps(json_schema())), (
        "docs/events.schema.json is stale; run: python -m agentstream.contracts.schema"
    )
    assert text == dumps(json_schema()), "regenerate for stable formatting: python -m agentstream.contracts.schema"


def test_schema_shape() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "agentstream events"
    # events, and the telemetry stream's messages
    wire: tuple[type[msgspec.Struct], ...] = (*ALL_EVENT_TYPES, SpanBatch, SpanRecord)
    assert schema["oneOf"] == [{"$ref": f"#/$defs/{cls.__name__}"} for cls in wire]
    for cls in wire:
        d = schema["$defs"][cls.__name__]
        assert d["properties"][TAG_FIELD] == {"enum": [tag_of(cls)]}
        assert TAG_FIELD in d["required"]


@DETERMINISTIC
@given(any_event)
def test_encoded_events_match_schema_structurally(ev: Any) -> None:
    """A dependency-free check: keys, required fields and the tag agree with the schema."""
    d = json_schema()["$defs"][type(ev).__name__]
    obj = json.loads(codec.encode(ev))
    assert set(obj) <= set(d["properties"])
    assert set(d["required"]) <= set(obj)
    assert obj[TAG_FIELD] in d["properties"][TAG_FIELD]["enum"]


def test_encoded_events_validate_against_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)

    @DETERMINISTIC
    @given(any_event)
    def check(ev: Any) -> None:
        validator.validate(json.loads(codec.encode(ev)))

    check()
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({TAG_FIELD: "agentstream.task.submitted.v1", "agent": "a"})
    validator.validate({TAG_FIELD: "agentstream.task.submitted.v1", "agent": "a", "input": "i"})


def test_schema_module_help_prints_usage_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from agentstream.contracts import schema

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        schema.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_schema_descriptions_do_not_depend_on_docstring_indentation() -> None:
    from agentstream.contracts.schema import clean_descriptions

    indented = {"a": {"description": "First line.\n\n    Indented body.\n    More."}, "b": [{"description": " x"}]}
    flush = {"a": {"description": "First line.\n\nIndented body.\nMore."}, "b": [{"description": "x"}]}
    assert clean_descriptions(indented) == clean_descriptions(flush) == flush
