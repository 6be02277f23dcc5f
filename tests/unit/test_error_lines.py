"""What a log line may say of an exception: its type and where, never its message."""

from __future__ import annotations

import pydantic
import pytest

from broker.errors import without_values


class _Applicant(pydantic.BaseModel):
    id_number: int


def _parse(raw: str) -> _Applicant:
    return _Applicant(id_number=raw)  # type: ignore[arg-type]


def test_a_validation_error_is_logged_without_the_value_it_quotes() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        _parse("Nguyễn Văn An 066090001234")
    assert "066090001234" in str(caught.value)  # what log.exception would have printed
    line = without_values(caught.value)
    assert "066090001234" not in line and "Nguyễn" not in line
    assert line.startswith("pydantic_core._pydantic_core.ValidationError at ")
    assert "test_error_lines.py:" in line and "_parse" in line


def test_the_exception_it_came_from_is_named_by_type() -> None:
    try:
        try:
            raise KeyError("0905000000")
        except KeyError as e:
            raise RuntimeError("phone 0905000000") from e
    except RuntimeError as e:
        line = without_values(e)
    assert "0905000000" not in line
    assert line.startswith("builtins.RuntimeError at ")
    assert line.endswith("(from builtins.KeyError)")


def test_a_queue_declared_with_other_arguments_points_at_the_remedy() -> None:
    from pika.exceptions import ChannelClosedByBroker

    from broker.cli import rabbitmq_problem
    reply = ("PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue "
             "'cb.dead.intake' in vhost '/': received none but current is the value '20'")
    assert rabbitmq_problem(ChannelClosedByBroker(406, reply)) == (
        f"RabbitMQ refused: {reply} (it cannot change a queue's arguments: see "
        "docs/RELIABILITY.md, 'A queue declared with other arguments')")
    assert rabbitmq_problem(ChannelClosedByBroker(404, "NOT_FOUND - no queue 'x'")) == \
        "RabbitMQ refused: NOT_FOUND - no queue 'x'"


def test_a_handshake_that_times_out_is_one_line_not_a_traceback() -> None:
    # pika's connector raises it outside its AMQPError tree: a node out of file handles
    # takes the TCP connection and never answers the handshake (found by a review)
    from pika.adapters.utils.connection_workflow import AMQPConnectorStackTimeout

    from broker.cli import rabbitmq_problem
    # pika's own text, as it comes: the address tuple's repr, and no next step
    line = rabbitmq_problem(AMQPConnectorStackTimeout(
        "Timeout during AMQP handshake'127.0.0.1'/(<AddressFamily.AF_INET: 2>, "
        "<SocketKind.SOCK_STREAM: 1>, 6, '', ('127.0.0.1', 5672)); ssl=False"))
    assert line.startswith("RabbitMQ unreachable at ") and line.endswith(
        "(CASEBROKER_AMQP_URL): it took the TCP connection but did not answer the AMQP "
        "handshake; a node out of file handles does that: `rabbitmqctl status` shows them "
        "(File Descriptors), and deleting left-over topologies or a higher open-file "
        "limit frees them")
    assert "AddressFamily" not in line


def test_what_a_health_probe_shows_of_a_write_conflict_names_no_dossier() -> None:
    from broker.ledger import ConcurrentUpdate

    conflict = ConcurrentUpdate("T.UBND.A-261125-0010")  # the log may name it
    assert "T.UBND.A-261125-0010" in str(conflict)
    assert "T.UBND.A" not in conflict.summary and "0010" not in conflict.summary
    assert conflict.summary.startswith("a write conflict with another writer")
