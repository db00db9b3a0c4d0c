"""Messages of ``persona.v1`` <-> the request dataclasses of :mod:`persona.apps` and status rows.

A step is ``Step(kind, params)`` where ``params`` is the request's :meth:`~persona.apps.job.Request.to_dict`
without ``kind`` as a ``google.protobuf.Struct``. A Struct holds every number as a double, so on the
way back integral numbers become ``int`` again unless the dataclass field is a float (no request
field is a float today); :func:`~persona.apps.job.request_from_dict` then rebuilds the request and
refuses unknown kinds and fields.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

from persona.apps.job import Request, request_class, request_from_dict
from persona.errors import PersonaError
from persona.service.proto import modules

#: request states, as stored in the request table and named in the API
STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = frozenset({"done", "failed", "cancelled"})


def _pb2() -> Any:
    return modules()[0]


def state_to_enum(state: str) -> int:
    return _pb2().State.Value(state.upper())


def state_from_enum(value: int) -> str:
    name = _pb2().State.Name(value)
    if name == "STATE_UNSPECIFIED":
        raise PersonaError("request state unspecified")
    return name.lower()


# -- plain data <-> Struct ---------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    """``value`` as JSON data (tuples as lists, anything else as its text)."""
    return json.loads(json.dumps(value, default=str))


def to_struct(data: Mapping[str, Any]) -> Any:
    from google.protobuf import struct_pb2

    s = struct_pb2.Struct()
    s.update(_jsonable(dict(data)))
    return s


def from_struct(struct: Any) -> dict[str, Any]:
    """A Struct as plain data: numbers as floats, as ``json_format.MessageToDict`` gives them, at
    half its cost (the coordinator converts every partition's report)."""
    return {k: _plain(v) for k, v in struct.fields.items()}


def _plain(value: Any) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return value.number_value
    if kind == "list_value":
        return [_plain(v) for v in value.list_value.values]
    if kind == "struct_value":
        return from_struct(value.struct_value)
    if kind == "bool_value":
        return value.bool_value
    return None


def _ints(value: Any) -> Any:
    """Integral floats (a Struct's numbers) back to ints, recursively."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    return value


def _typed(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    cls = request_class(kind)
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    return {k: (v if "float" in types.get(k, "") else _ints(v)) for k, v in params.items()}


# -- requests <-> steps ------------------------------------------------------------------
def request_to_dict(request: Request | Mapping[str, Any]) -> dict[str, Any]:
    """A request (or its dict) as checked plain data ``{"kind": ..., field: value}``."""
    d = request.to_dict() if isinstance(request, Request) else dict(request)
    return _jsonable(request_from_dict(d).to_dict())  # round trip: unknown kinds/fields fail here


def step_to_message(request: Request | Mapping[str, Any]) -> Any:
    d = request_to_dict(request)
    kind = d.pop("kind")
    return _pb2().Step(kind=kind, params=to_struct(d))


def step_to_dict(step: Any) -> dict[str, Any]:
    """A ``Step`` message as a request dict (checked: unknown kinds and fields raise PersonaError)."""
    if not step.kind:
        raise PersonaError("a step needs a kind")
    params = _typed(step.kind, from_struct(step.params))
    if "kind" in params:
        raise PersonaError("step params must not hold 'kind'")
    return request_to_dict({"kind": step.kind, **params})


def step_to_request(step: Any) -> Request:
    return request_from_dict(step_to_dict(step))


def submit_message(steps: Iterable[Request | Mapping[str, Any]], *, idempotency_key: str = "",
                   label: str = "") -> Any:
    return _pb2().SubmitRequest(steps=[step_to_message(s) for s in steps], idempotency_key=idempotency_key,
                                label=label)


# -- status rows <-> RequestStatus ---------------------------------------------------------
def status_to_message(row: Mapping[str, Any]) -> Any:
    """A request-table row (see :mod:`persona.service.db`) as a ``RequestStatus``."""
    pb2 = _pb2()
    msg = pb2.RequestStatus(
        request_id=row["id"], state=state_to_enum(row["state"]), label=row.get("label") or "",
        step=int(row.get("step") or 0), feeds_done=int(row.get("feeds_done") or 0),
        records_done=int(row.get("records_done") or 0),
        records_total_done=int(row.get("records_total_done") or 0), rate=float(row.get("rate") or 0.0),
        error=row.get("error") or "", submitted_at=float(row.get("submitted_at") or 0.0),
        started_at=float(row.get("started_at") or 0.0), finished_at=float(row.get("finished_at") or 0.0),
        attempts=int(row.get("attempts") or 0), cancel_requested=bool(row.get("cancel_requested")))
    for s in row.get("steps") or []:
        d = dict(s)
        kind = d.pop("kind")
        msg.steps.add(kind=kind, params=to_struct(d))
    for summary in row.get("summaries") or []:
        msg.summaries.add().update(_jsonable(summary))
    return msg


def status_from_message(msg: Any) -> dict[str, Any]:
    """A ``RequestStatus`` as plain data (what the client returns)."""
    return {
        "id": msg.request_id, "state": state_from_enum(msg.state), "label": msg.label,
        "steps": [{"kind": s.kind, **_typed(s.kind, from_struct(s.params))} for s in msg.steps],
        "step": msg.step, "feeds_done": msg.feeds_done, "records_done": msg.records_done,
        "records_total_done": msg.records_total_done, "rate": msg.rate, "error": msg.error,
        "summaries": [_ints(from_struct(s)) for s in msg.summaries], "submitted_at": msg.submitted_at,
        "started_at": msg.started_at, "finished_at": msg.finished_at, "attempts": msg.attempts,
        "cancel_requested": msg.cancel_requested,
    }
