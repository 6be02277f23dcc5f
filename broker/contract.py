"""The contract for integrators: an AsyncAPI 2.6 document built from the message models.

``docs/asyncapi.yaml`` is this document for the default prefix; a test keeps it equal to
what the models say, so the published contract cannot drift from the code.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from broker.messages import KINDS, published_schema
from broker.topology import INTAKE_KEY, STATUS_KEY, Topology

#: (channel address, exchange, routing key, kind(s), who publishes, who consumes)
_FLOWS = (
    ("intake", "intake", INTAKE_KEY, ("dossier.submitted",), "desk", "broker"),
    ("status", "status", STATUS_KEY, ("dossier.status", "dossier.returned",
                                      "dossier.supplemented", "dossier.withdrawn"),
     "agency or desk", "broker"),
    ("agency.{agency_id}", "agency", "{agency_id}", ("dossier.assigned", "agency.notice"),
     "broker", "agency"),
    ("desk.{desk_id}", "desk", "{desk_id}", ("desk.notice",), "broker", "desk"),
)


#: a Sphinx role in a docstring (:meth:`unsaid`, :class:`~x.Y`): shown as code
_ROLE = re.compile(r":(?:meth|func|class|data|attr|mod|exc):`~?([^`]+)`")


def _prose(doc: str) -> str:
    """A docstring as the contract's readers see it: CommonMark, not reStructuredText.
    Its indentation and line breaks go (a paragraph is one line; a list item keeps its
    own), roles and double backquotes become code spans."""
    text = _ROLE.sub(r"`\1`", inspect.cleandoc(doc)).replace("``", "`")
    paragraphs = []
    for block in text.split("\n\n"):
        lines: list[str] = []
        for line in block.splitlines():
            if lines and not line.lstrip().startswith(("* ", "- ")):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line.strip())
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _described(node: Any) -> Any:
    """``node`` with every description in it (a JSON Schema's, at any depth) as
    :func:`_prose`."""
    if isinstance(node, dict):
        return {k: _prose(v) if k == "description" and isinstance(v, str) else _described(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_described(v) for v in node]
    return node


def asyncapi(topology: Topology | None = None) -> dict[str, Any]:
    """The AsyncAPI document of every channel and message kind."""
    t = topology or Topology()
    exchanges = {"intake": t.intake_exchange, "status": t.status_exchange,
                 "agency": t.agency_exchange, "desk": t.desk_exchange}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for kind, model in KINDS.items():
        name = kind.replace(".", "_")
        schema = published_schema(model, ref_template="#/components/schemas/{model}")
        for def_name, definition in schema.pop("$defs", {}).items():
            schemas[def_name] = _described(definition)
        schemas[name] = _described(schema)
        # the first paragraph is the summary, the rest (if any) the description
        summary, _, more = _prose(model.__doc__ or "").partition("\n\n")
        messages[name] = {
            "name": kind, "title": model.__name__, "summary": summary,
            **({"description": more} if more else {}),
            "contentType": "application/json",
            "bindings": {"amqp": {"messageType": kind, "deliveryMode": 2,
                                  "bindingVersion": "0.2.0"}},
            "payload": {"$ref": f"#/components/schemas/{name}"},
        }
    channels: dict[str, Any] = {}
    for address, exchange, key, kinds, publisher, consumer in _FLOWS:
        refs = [{"$ref": f"#/components/messages/{k.replace('.', '_')}"} for k in kinds]
        message = refs[0] if len(refs) == 1 else {"oneOf": refs}
        op = "publish" if publisher != "broker" else "subscribe"
        channels[f"{t.prefix}.{address}"] = {
            "description": f"{publisher} → {consumer}: exchange {exchanges[exchange]}, "
                           f"routing key {key}",
            op: {"operationId": f"{op}_{exchange}", "message": message},
            "bindings": {"amqp": {"is": "routingKey", "bindingVersion": "0.2.0",
                                  "exchange": {"name": exchanges[exchange], "type": "direct",
                                               "durable": True, "autoDelete": False}}},
        }
    return {
        "asyncapi": "2.6.0",
        "info": {"title": "casebroker", "version": "1",
                 "description": "Dossiers from any desk to the competent agency and results "
                                "back. Every message is persistent JSON with a stable "
                                "message_id, by which receivers drop duplicates, casebroker "
                                "too: a message sent again (a retry after a lost confirm) "
                                "must carry the same message_id, or it is taken for a new "
                                "one. The SDK sends submit:<submission_id>, "
                                "status:<update_id> and event:<event_id>; do the same. "
                                "correlation_id = the dossier code (a submission: its "
                                "submission id; a notice about a submission that opened no "
                                "dossier: none); type = message kind; user_id = your "
                                "RabbitMQ login, which RabbitMQ checks: where the province "
                                "runs with a login per desk and agency "
                                "(CASEBROKER_PARTY_USERS), a message without it, or from "
                                "another login than the desk or agency it names, is "
                                "dead-lettered as sender_mismatch; content_type = "
                                "application/json (a charset parameter, utf-8 only, may "
                                "follow; none at all is taken as JSON too, any other is "
                                "dead-lettered as wrong_content_type)."},
        "defaultContentType": "application/json",
        "channels": channels,
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }
