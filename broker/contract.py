"""The contract for integrators: an AsyncAPI 2.6 document built from the message models.

``docs/asyncapi.yaml`` is this document for the default prefix; a test keeps it equal to
what the models say, so the published contract cannot drift from the code.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from broker.messages import KINDS, published_schema
from broker.topology import DELIVERY_LIMIT, INTAKE_KEY, STATUS_KEY, Topology

#: (exchange, routing key, kind(s), who publishes, what it is for). Desks and agencies
#: publish to an exchange under a routing key; they read their own queue
_PUBLISHED: tuple[tuple[str, str, tuple[str, ...], str, str], ...] = (
    ("intake", INTAKE_KEY, ("dossier.submitted",), "desk", "a new dossier"),
    ("status", STATUS_KEY, ("dossier.status", "dossier.returned", "dossier.supplemented",
                            "dossier.withdrawn"),
     "agency or desk", "an agency's status update, a desk's event"),
)
#: (party, kind(s) it reads from its queue)
_READ: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("agency", ("dossier.assigned", "agency.notice")),
    ("desk", ("desk.notice",)),
)
#: a desk or agency id as the catalog spells it, as the messages' fields take it
_PARTY_ID = {"type": "string", "minLength": 1, "maxLength": 64,
             "pattern": "^[A-Za-z0-9._-]+$"}


#: the AMQP correlation_id property of each kind
_CORRELATION = {
    "dossier.submitted": "the submission id",
    "dossier.status": "the dossier code", "dossier.returned": "the dossier code",
    "dossier.supplemented": "the dossier code",
    "dossier.withdrawn": "the dossier code, or, for a withdrawal of a dossier held without "
                         "one, its submission id",
    "dossier.assigned": "the dossier code", "agency.notice": "the dossier code",
    "desk.notice": "the dossier code; none on a notice about a submission that opened no "
                   "dossier (held, refused from triage, withdrawn while held)",
}


def _channels(t: Topology) -> dict[str, Any]:
    """The channels of AsyncAPI 2.6 with AMQP bindings 0.2.0: one per routing key a party
    publishes under (``is: routingKey``, with its exchange), one per queue it reads
    (``is: queue``, its id a parameter)."""

    def message(kinds: tuple[str, ...]) -> dict[str, Any]:
        refs = [{"$ref": f"#/components/messages/{k.replace('.', '_')}"} for k in kinds]
        return refs[0] if len(refs) == 1 else {"oneOf": refs}

    exchanges = {"intake": t.intake_exchange, "status": t.status_exchange}
    channels: dict[str, Any] = {}
    for exchange, key, kinds, publisher, what in _PUBLISHED:
        name = exchanges[exchange]
        channels[key] = {
            "description": f"{publisher} → casebroker: {what}. Publish to exchange {name} "
                           f"with routing key `{key}`, persistent, mandatory, with publisher "
                           "confirms: a message is sent once RabbitMQ confirms it, and one "
                           "it returns as unroutable (the topology not declared) or nacks "
                           "(a queue over its length cap) is not sent.",
            "publish": {"operationId": f"publish_{exchange}", "message": message(kinds),
                        "bindings": {"amqp": {"deliveryMode": 2, "mandatory": True,
                                              "bindingVersion": "0.2.0"}}},
            "bindings": {"amqp": {"is": "routingKey", "bindingVersion": "0.2.0",
                                  "exchange": {"name": name, "type": "direct",
                                               "durable": True, "autoDelete": False}}},
        }
    for party, kinds in _READ:
        queue = t.agency_queue(f"{{{party}_id}}") if party == "agency" else \
            t.desk_queue(f"{{{party}_id}}")
        channels[queue] = {
            "description": f"casebroker → {party}: the {party}'s own queue, read with "
                           "manual acks, each message acked once handled. casebroker "
                           "declares it (`casebroker topology declare`): a quorum queue "
                           f"with x-delivery-limit {DELIVERY_LIMIT} and dead-lettering to "
                           f"exchange {t.dead_letter_exchange} (routing key `{party}`); "
                           "do not declare it (a declare with other arguments is refused "
                           "with 406 PRECONDITION_FAILED), consume it. A message rejected "
                           "without requeue, or returned to the queue "
                           f"{DELIVERY_LIMIT} times (a consumer stopping or losing its "
                           "connection with it unacked), goes to "
                           f"{t.dead_queue(party)} for the province's operator.",
            "parameters": {f"{party}_id": {
                "description": f"the {party}'s id in the province's catalog",
                "schema": dict(_PARTY_ID)}},
            "subscribe": {"operationId": f"read_{party}_queue", "message": message(kinds),
                          "bindings": {"amqp": {"ack": True, "bindingVersion": "0.2.0"}}},
            "bindings": {"amqp": {"is": "queue", "bindingVersion": "0.2.0",
                                  "queue": {"name": queue, "durable": True,
                                            "exclusive": False, "autoDelete": False}}},
        }
    return channels


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
            "messageId": name, "name": kind, "title": model.__name__, "summary": summary,
            **({"description": more} if more else {}),
            "contentType": "application/json",
            "correlationId": {"description": f"the AMQP correlation_id property: "
                                             f"{_CORRELATION[kind]}",
                              "location": "$message.header#/correlation_id"},
            "bindings": {"amqp": {"messageType": kind, "bindingVersion": "0.2.0"}},
            "payload": {"$ref": f"#/components/schemas/{name}"},
        }
    return {
        "asyncapi": "2.6.0",
        "id": "urn:casebroker:contract:v1",
        "info": {"title": "casebroker", "version": "1",
                 "license": {"name": "Apache-2.0",
                             "url": "https://www.apache.org/licenses/LICENSE-2.0"},
                 "description": "Dossiers from any desk to the competent agency and results "
                                "back. Exchange and queue names begin with the province's "
                                f"prefix, here `{t.prefix}` (`casebroker schema --asyncapi "
                                "--prefix P` writes this document for another). Every "
                                "message is persistent JSON with a stable "
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
        "servers": {"rabbitmq": {
            "url": "{host}:{port}", "protocol": "amqp", "protocolVersion": "0.9.1",
            "description": "The province's RabbitMQ (`amqps` where it serves TLS), in the "
                           "virtual host and under the login the province gives each desk "
                           "and agency.",
            "variables": {"host": {"description": "given by the province",
                                   "default": "localhost"},
                          "port": {"enum": ["5672", "5671"], "default": "5672",
                                   "description": "5671: TLS"}}}},
        "defaultContentType": "application/json",
        "channels": _channels(t),
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }
