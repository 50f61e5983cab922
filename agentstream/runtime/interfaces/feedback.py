"""``POST /v1/tasks/{task_id}/feedback``: a user's thumbs up or down, with an
optional comment, stored as a FeedbackSubmitted on the EVALS stream beside the
online evaluators' scores (so the same panels count both).

Feedback is accepted only for a task that has a result (the agent comes from
the stored result, never from the body), and the comment is bounded: the
body is untrusted input like any other.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

import msgspec
from aiohttp import web

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import FeedbackSubmitted
from agentstream.runtime.adapters.scan import stored_result
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.interfaces.http_common import _BadRequest, _error, _json

MAX_COMMENT = 2000


class FeedbackBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    rating: Literal["up", "down"]
    comment: Annotated[str, msgspec.Meta(max_length=MAX_COMMENT)] = ""
    user_id: Annotated[str, msgspec.Meta(max_length=256)] = "anonymous"


_decoder = msgspec.json.Decoder(FeedbackBody)


async def record_feedback(client: AgentClient, task_id: str, body: FeedbackBody) -> FeedbackSubmitted | None:
    """Publish the feedback; None when the task has no result (unknown or unfinished)."""
    raw = await stored_result(client.js, task_id, direct=True)
    if raw is None:
        return None
    result = codec.task_result.decode(raw)
    event = FeedbackSubmitted(task_id=task_id, agent=result.agent, rating=body.rating, at=time.time(),
                              comment=body.comment, user_id=body.user_id)
    await client.js.publish(subjects.eval_feedback(result.agent, task_id), codec.encode(event), timeout=10)
    return event


def add_routes(app: web.Application, client: AgentClient) -> None:
    async def post_feedback(request: web.Request) -> web.Response:
        try:
            task_id = subjects.check_token("task id", request.match_info["task_id"])
        except ValueError as exc:
            raise _BadRequest(str(exc)) from None
        try:
            body = _decoder.decode(await request.read())
        except msgspec.DecodeError as exc:
            raise _BadRequest(f'invalid feedback: {exc}; send {{"rating": "up" or "down", "comment": "..."}}') \
                from None
        event = await record_feedback(client, task_id, body)
        if event is None:
            return _error(404, f"no result for task {task_id}: feedback is for finished tasks")
        return _json(event, status=202)

    app.router.add_post("/v1/tasks/{task_id}/feedback", post_feedback)
