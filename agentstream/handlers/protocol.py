"""The whole protocol as FastStream subscribers and publishers, for the AsyncAPI
document (``agentstream asyncapi``) and FastStream's in-memory ``TestNatsBroker``.

Each subscriber here is a thin shim over the same handler the production
consumer loop runs (``agentstream.handlers.agent`` / ``.tools``). The hot path
itself runs on nats-py pull consumers (see ``agentstream.runtime.execution.consumer`` for
the measured reason). FastStream derives payload schemas with pydantic, which
does not know msgspec Structs, so handlers take the raw message and the
payload schemas are filled in from msgspec's JSON Schema.
"""

from __future__ import annotations

import json
from typing import Any, get_args

import msgspec
from faststream.nats import JStream, NatsBroker, NatsMessage
from faststream.specification import AsyncAPI

from agentstream.contracts import events as ev
from agentstream.contracts import subjects
from agentstream.contracts.schema import clean_descriptions
from agentstream.contracts.telemetry import SpanBatch

TITLE = "agentstream"
VERSION = "1.0.0"

# (channel address, role, event types, description)
# EVENTS' subject transform (contracts.subjects.events_transform): what its
# consumers and direct gets see, while publishers and core-NATS subscribers
# see the channel's own subject.
_STORED = ("EVENTS stores it as agents.{agent}.<kind>.{partition}.{task_id}, the partition a hash of the task id "
           "(docs/scaling.md): read the stream with that subject.")

CHANNELS: tuple[tuple[str, str, tuple[type[msgspec.Struct], ...], str], ...] = (
    ("agents.{agent}.tasks", "subscribe", (ev.TaskSubmitted,),
     "Submit a task to an agent. Stream TASKS (limits retention: every durable consumer, production "
     "or shadow, sees every task). Set header Nats-Msg-Id to the task id to make retries idempotent."),
    ("tools.{tool}.calls", "subscribe", (ev.ToolCallRequested,),
     "A tool call for the tool workers (stream TOOLS, one durable consumer per tool)."),
    ("agents.{agent}.events.{task_id}", "subscribe", (ev.ToolCallCompleted,),
     "The agent's continuation inbox for one task (stream EVENTS): tool results from tool workers. "
     "A result is accepted only for a call the task's session dispatched (docs/security.md). "
     + _STORED),
    ("agents.{agent}.decisions.{task_id}", "subscribe", (ev.ApprovalDecided,),
     "Approval decisions for one task (stream EVENTS), the only subject a decision is accepted from; "
     "only the approver role may publish here. The CLI and HTTP API check the approver first. " + _STORED),
    ("agents.{agent}.progress.{task_id}", "publish", get_args(ev.ProgressEvent),
     "Progress notices for watchers and timelines (stream EVENTS). " + _STORED),
    ("approvals.{agent}.requested", "publish", (ev.ApprovalRequested,),
     "A tool call waiting for a human decision (stream APPROVALS); the session is parked meanwhile."),
    ("audit.{kind}.{agent}", "publish", (ev.AuditRecord,),
     "Auditable facts: approval requested, decided, rejected, expired (stream AUDIT). "
     "{kind} is the record's kind with '.' as '_'."),
    ("agents.{agent}.results.{task_id}", "publish", get_args(ev.TaskResult),
     "The task's result (stream RESULTS). Subscribe here, or read the last message on the subject."),
    ("deadletter.{subject}", "publish", (ev.DeadLettered,),
     "Messages a consumer could not process, with the reason (stream DEADLETTER)."),
    ("evals.{agent}.scores.{task_id}", "publish", (ev.EvaluationScored,),
     "Online evaluators' scores of a finished task, kept apart (stream EVALS). Canary analysis reads these."),
    ("evals.{agent}.feedback.{task_id}", "subscribe", (ev.FeedbackSubmitted,),
     "A user's thumbs up or down on a task (stream EVALS); POST /v1/tasks/{task_id}/feedback publishes it."),
    ("evals.{agent}.drift", "publish", (ev.DriftDetected,),
     "A score drifted: its moving window fell below its baseline window (stream EVALS)."),
    ("memory.query.{tenant}", "subscribe", (ev.MemoryQueryRequested,),
     "Request-reply with the memory service (core NATS, queue group 'memory'); the reply is a MemoryReplied. "
     "The tenant is the subject's token, never a body field."),
    ("memory.write.{tenant}", "subscribe", (ev.MemoryWriteRequested,),
     "Typed memory writes (ADD, UPDATE, DELETE, NOOP), idempotent by write_id, through the poisoning gate; "
     "the reply is a MemoryReplied."),
    ("memory.admin.{tenant}", "subscribe", (ev.MemoryAdminRequested, ev.MemoryWriteRequested),
     "Operators: forget a source, review the quarantine, ingest (writes here skip the per-source rate limit)."),
    ("telemetry.spans.{trace_id}", "publish", (SpanBatch,),
     "Finished spans of one trace, batched, from the built-in exporter (stream TELEMETRY)."),
)


def build_broker() -> NatsBroker:
    broker = NatsBroker()
    streams = {sd.name: JStream(sd.name, subjects=list(sd.subjects), declare=False) for sd in subjects.STREAMS}

    def stream_for(address: str) -> JStream | None:
        if address.startswith("evals."):
            return streams["EVALS"]
        if address.startswith("tools."):
            return streams["TOOLS"]
        if address.startswith("memory."):
            return None  # request-reply on core NATS, no stream
        if ".tasks" in address:
            return streams["TASKS"]
        return streams["EVENTS"]

    for address, role, _types, description in CHANNELS:
        title = _title(address)
        if role == "subscribe":
            async def shim(msg: NatsMessage) -> None:  # the production handler runs on nats-py
                return None

            broker.subscriber(address, stream=stream_for(address), title=title,
                              description=description)(shim)
        else:
            broker.publisher(address, title=title, description=description)
    return broker


def _title(address: str) -> str:
    return address.replace("{", "").replace("}", "").replace(".", "_")


def asyncapi_document() -> dict[str, Any]:
    broker = build_broker()
    doc: dict[str, Any] = AsyncAPI(broker, title=TITLE, version=VERSION, schema_version="3.0.0",
                                   description=__doc__.split("\n\n")[0] if __doc__ else None
                                   ).to_specification().to_jsonable()
    _, components = msgspec.json.schema_components((*ev.ALL_EVENT_TYPES, SpanBatch),
                                                   ref_template="#/components/schemas/{name}")
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(clean_descriptions(components))
    messages = doc["components"].setdefault("messages", {})
    by_title = {_title(a): types for a, _, types, _ in CHANNELS}
    for key, message in messages.items():
        types = next((t for title, t in by_title.items() if key.startswith(title)), None)
        if types is None:
            continue
        refs = [{"$ref": f"#/components/schemas/{t.__name__}"} for t in types]
        message["payload"] = refs[0] if len(refs) == 1 else {"oneOf": refs}
        message["contentType"] = "application/json"
    for name in list(schemas):
        if name not in components and _unused(doc, name):
            del schemas[name]
    return doc


def _unused(doc: dict[str, Any], name: str) -> bool:
    return f'"#/components/schemas/{name}"' not in json.dumps(doc)


def asyncapi_json() -> str:
    return json.dumps(asyncapi_document(), indent=2, sort_keys=True) + "\n"
