"""The `casebroker` command."""

from __future__ import annotations

import argparse
import getpass
import importlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from broker import logs
from broker.errors import (
    CasebrokerError,
    CatalogError,
    DecodeError,
    RoutingError,
    SettingError,
)

if TYPE_CHECKING:  # the ledger loads only for the commands using it
    from broker.ledger import Ledger

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2

#: modules that add subcommands: each has ``register(sub, groups)`` where ``sub`` is the
#: top-level subparsers and ``groups`` maps a group name ("rules", ...) to its
#: subparsers; parsers they add set ``handler=callable(args) -> int`` as a default
COMMAND_MODULES: tuple[str, ...] = ("broker.rules_cli", "bench.cli", "broker.ops.deadletters",
                                     "broker.ops.audit", "broker.ops.report", "broker.ops.upgrade",
                                     "broker.ops.resend")


def _number(kind: Callable[[str], float], text: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None


def _bounded(kind: Callable[[str], float], rule: str,
             ok: Callable[[float], bool]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = _number(kind, text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, not {text}")
        return value
    return parse


#: the most a count or a number of days may be where an option gives no other bound: a
#: typing mistake beyond it ended in a traceback (an SQL LIMIT, a date) where a usage
#: error was due (a review)
NUMBER_MAX = 2**31 - 1


def at_least(minimum: float, kind: Callable[[str], float] = int,
             most: float = NUMBER_MAX) -> Callable[[str], Any]:
    """An argparse ``type``: a number (``int`` unless ``kind`` says) of at least ``minimum``,
    so that a count of 0 or below is refused at once instead of quietly doing nothing, and
    at most ``most`` (NaN and infinity are refused too)."""
    def parse(text: str) -> Any:
        value = _number(kind, text)
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {text}")
        if not value <= most:
            raise argparse.ArgumentTypeError(f"must be at most {most}, not {text}")
        return value
    return parse


def above(bound: float, kind: Callable[[str], float] = float) -> Callable[[str], Any]:
    """An argparse ``type``: a number greater than ``bound`` (a rate, a timeout)."""
    return _bounded(kind, f"above {bound}", lambda v: v > bound)


#: an argparse ``type`` for a TCP port (0 where the option says what 0 means)
tcp_port = _bounded(int, "a TCP port, 0 to 65535", lambda v: 0 <= v <= 65535)


#: the years a date or moment on the command line may fall in, as in a message's times: a
#: period's bounds are shifted by a day and a zone, which overflowed at 0001 and 9999
YEARS = range(1900, 3000)
#: the years the working-day calendar knows: the ``holidays`` package's Vietnamese
#: calendar ends with 2100 (after it, not even New Year's Day was a day off: a review)
CALENDAR_YEARS = range(1900, 2101)
#: an argparse ``type`` for a year of the working-day calendar
year = _bounded(int, f"a year from {CALENDAR_YEARS.start} to {CALENDAR_YEARS.stop - 1} (the "
                "holiday calendar's)", lambda v: v in CALENDAR_YEARS)


def _in_years(value: date, text: str, years: range = YEARS) -> None:
    if value.year not in years:
        raise argparse.ArgumentTypeError(
            f"{text!r} is outside the years {years.start} to {years.stop - 1}")


def day(text: str) -> date:
    """An argparse ``type``: a calendar date, YYYY-MM-DD."""
    try:
        value = date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None
    _in_years(value, text)
    return value


def instant(text: str) -> datetime:
    """An argparse ``type``: a moment, ISO 8601 with its UTC offset."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"not a moment with its UTC offset (e.g. 2026-02-10T09:00:00+07:00): {text!r}")
    _in_years(value, text)
    return value


def calendar_instant(text: str) -> datetime:
    """:func:`instant`, in a year the working-day calendar knows (``CALENDAR_YEARS``)."""
    value = instant(text)
    _in_years(value, text, CALENDAR_YEARS)
    return value


def moment_or_day(text: str) -> datetime:
    """An argparse ``type``: a date (its midnight, Vietnam time) or a moment, ISO 8601
    with its UTC offset."""
    from broker.lifecycle import LEGAL_TIMEZONE

    try:
        if len(text) == 10:
            when = datetime.combine(date.fromisoformat(text), datetime.min.time(),
                                    tzinfo=ZoneInfo(LEGAL_TIMEZONE))
        else:
            when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a date (2026-10-01) nor an ISO 8601 time") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no offset (+07:00, Z)")
    _in_years(when, text)
    return when


def zone(text: str) -> str:
    """An argparse ``type``: an IANA time zone name, e.g. Asia/Ho_Chi_Minh."""
    try:
        ZoneInfo(text)
    except (ValueError, OSError, ZoneInfoNotFoundError):  # "Asia": a folder of the database
        raise argparse.ArgumentTypeError(
            f"not a time zone name (e.g. Asia/Ho_Chi_Minh): {text!r}") from None
    return text


def words(most: int) -> Callable[[str], str]:
    """An argparse ``type``: text of 1 to ``most`` characters, without surrounding blanks."""
    def parse(text: str) -> str:
        text = text.strip()
        if not 0 < len(text) <= most:
            raise argparse.ArgumentTypeError(f"1 to {most} characters, not {len(text)}")
        return text
    return parse


#: the longest name ``--by`` may give: who refused or pruned (the ledger's columns)
BY_MAX = 64


def json_value(value: Any) -> Any:
    """How a command's ``--json`` writes what JSON has no type for: times in ISO 8601
    (``str`` of a datetime has a space for the ``T``), anything else as text."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def system_user() -> str:
    """Who runs this command, for the ledger when ``--by`` does not say."""
    try:
        return getpass.getuser()[:BY_MAX]
    except (OSError, KeyError):  # no name for this uid (a bare container)
        return f"uid {os.getuid()}"


def listed(item: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """An argparse ``type``: comma-separated values, each parsed by ``item``."""
    def parse(text: str) -> list[Any]:
        values = [item(x.strip()) for x in text.split(",") if x.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"no values in {text!r}")
        return values
    return parse


#: what --db-url says of itself wherever a command takes it
DB_URL_HELP = "ledger URL (default: $CASEBROKER_DB_URL or sqlite:///casebroker.sqlite3)"
#: what --catalog says of itself wherever a command takes it
CATALOG_HELP = "catalog YAML (default: $CASEBROKER_CATALOG or the shipped Đắk Lắk catalog)"


def catalog_option(p: argparse.ArgumentParser, help: str = CATALOG_HELP) -> None:
    """``--catalog``, by default the one ``CASEBROKER_CATALOG`` names: set where `casebroker
    run` runs and in the operator's shell, the commands an alert's runbook names (`topology
    declare`, `rules calendar`) act on the catalog in force, not on the shipped one."""
    p.add_argument("--catalog", default=os.environ.get("CASEBROKER_CATALOG") or None,
                   help=help)


def _common(p: argparse.ArgumentParser, *, catalog: bool = True, db: bool = False,
            prefix: bool = False) -> None:
    if catalog:
        catalog_option(p)
    if db:
        p.add_argument("--db-url", help=DB_URL_HELP)
    if prefix:
        p.add_argument("--prefix", help="topology prefix (default: $CASEBROKER_PREFIX or cb)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from broker.amqp import PREFETCH_MAX, ConsumerSettings
    from broker.security import management_url

    parser = argparse.ArgumentParser(
        prog="casebroker", description="Route administrative-procedure dossiers from any desk "
        "to the competent agency over RabbitMQ, and results back to the chosen desk.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the router, status router and deadline watch "
                         "until Ctrl-C")
    _common(run, db=True, prefix=True)
    run.add_argument("--metrics-port", type=tcp_port,
                     help="Prometheus /metrics port (0: off; default: "
                          "$CASEBROKER_METRICS_PORT or 9464)")
    defaults = ConsumerSettings
    run.add_argument("--prefetch-count", type=at_least(1, most=PREFETCH_MAX),
                     default=defaults.prefetch_count,
                     help=f"unacked deliveries per queue (default {defaults.prefetch_count})")
    run.add_argument("--batch-size", type=at_least(1, most=PREFETCH_MAX),
                     default=defaults.batch_size,
                     help=f"deliveries per ledger transaction (default {defaults.batch_size})")
    run.add_argument("--flush-interval-ms", type=at_least(0, most=60_000),
                     default=defaults.flush_interval_ms,
                     help="wait this long for a batch to fill (default 0: flush what one "
                          "network read brought)")
    run.add_argument("--hold-s", type=at_least(0, float, most=86_400), default=defaults.hold_s,
                     help="while the ledger is away, keep a queue's unacked deliveries this "
                          "long, then give them back and consume again once one goes through "
                          f"(default {defaults.hold_s:.0f}; keep it under RabbitMQ's "
                          "consumer_timeout, 30 minutes by default)")

    topo = sub.add_parser("topology", help="declare or delete exchanges and queues")
    topo_sub = topo.add_subparsers(dest="action", required=True)
    p = topo_sub.add_parser("declare", help="declare the catalog's topology (idempotent; "
                            "`run` does it too, and again on each reload, so new desks' and "
                            "agencies' queues appear)")
    _common(p, prefix=True)
    p = topo_sub.add_parser("delete", help="delete every queue and exchange under the prefix; "
                            "refused while a queue holds messages or has consumers")
    _common(p, prefix=True)
    p.add_argument("--force", action="store_true",
                   help="delete queues that hold messages or have consumers: what they hold "
                   "is lost")
    p.add_argument("--management-url", default=management_url(),
                   help="to find queues under the prefix that the catalog does not name "
                   "(default: $CASEBROKER_MANAGEMENT_URL or this machine's)")

    rules = sub.add_parser("rules", help="check a catalog, explain a routing decision, coverage, "
                                                    "diff of two catalogs")
    rules_sub = rules.add_subparsers(dest="action", required=True)
    explain = rules_sub.add_parser("explain", help="route one dossier.submitted JSON file")
    explain.add_argument("file", help="a dossier.submitted/v1 JSON file ('-' for stdin)")
    explain.add_argument("--at", type=calendar_instant, help="received at (ISO 8601 with offset; "
                         "default submitted_at)")
    explain.add_argument("--json", action="store_true", help="print one JSON object")
    _common(explain)
    check = rules_sub.add_parser("check", help="validate a catalog; exit 1 on problems")
    check.add_argument("path", nargs="?", default=os.environ.get("CASEBROKER_CATALOG") or None,
                       help="catalog YAML (default: $CASEBROKER_CATALOG, else the shipped one)")

    dossier = sub.add_parser("dossier", help="look up dossiers in the ledger; resend what a "
                                                        "lost queue held")
    dossier_sub = dossier.add_subparsers(dest="action", required=True)
    show = dossier_sub.add_parser(
        "show", help="a dossier and its process-control history, by its code or by the "
                     "submission id its desk sent it under (also one that opened no dossier)")
    show.add_argument("code", help="a dossier code, or a submission id")
    show.add_argument("--json", action="store_true",
                      help="print one JSON object: the dossier and its history, or what "
                      "became of a submission that opened none")
    show.add_argument("--tz", type=zone, default="Asia/Ho_Chi_Minh",
                      help="time zone of the times shown (default Asia/Ho_Chi_Minh)")
    _common(show, catalog=False, db=True)
    listing = dossier_sub.add_parser(
        "list", help="dossiers by due date, soonest first: an agency's, a desk's, in some "
                     "states, or open and overdue now (codes, states, parties, times)")
    listing.add_argument("--agency", help="with this agency now")
    listing.add_argument("--desk", help="received or to be returned at this desk")
    listing.add_argument("--state", type=_state, action="append", default=[],
                         help="in this state, 1-10 (repeatable)")
    listing.add_argument("--overdue", action="store_true",
                         help="open and past the due day now (a clock paused in time is not late)")
    listing.add_argument("--limit", type=at_least(1, most=1_000_000_000), default=100,
                         help="at most this many (default 100)")
    listing.add_argument("--json", action="store_true",
                         help="print one JSON object: the dossiers, and whether more matched")
    listing.add_argument("--tz", type=zone, default="Asia/Ho_Chi_Minh",
                         help="time zone of the times shown (default Asia/Ho_Chi_Minh)")
    _common(listing, catalog=False, db=True)

    demo = sub.add_parser("demo", help="drive real traffic through RabbitMQ and report")
    demo.add_argument("--dossiers", type=at_least(1), default=500, help="how many (default 500)")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.add_argument("--seed", type=int, default=66,
                      help="seed of the generated dossiers and parties' choices (default 66)")
    demo.add_argument("--rate", type=at_least(0, float), default=0.0,
                      help="submissions per second (0: as fast as confirms allow)")
    demo.add_argument("--parallel", type=at_least(1), default=4,
                      help="agency systems, desk systems and submitting desks working at "
                      "once, each on its own connection (default 4; --rate submits from one)")
    demo.add_argument("--timeout-s", type=above(0), default=600.0,
                      help="give up when nothing progresses for this long (default 600)")
    demo.add_argument("--keep", action="store_true",
                      help="keep the demo's queues and ledger afterwards")
    _common(demo)
    demo.add_argument("--db-url", help="an empty ledger to use, e.g. a new PostgreSQL "
                      "database (default: a throw-away SQLite file; $CASEBROKER_DB_URL, "
                      "the working ledger, is not read)")

    users = sub.add_parser("users", help="one RabbitMQ user per desk and agency")
    users_sub = users.add_subparsers(dest="action", required=True)
    plan = users_sub.add_parser("plan", help="print every user and its permissions")
    plan.add_argument("--json", action="store_true",
                      help="print a JSON list, one object per user and its permissions")
    _common(plan, prefix=True)
    apply_ = users_sub.add_parser("apply", help="create missing users, set permissions")
    _common(apply_, prefix=True)
    apply_.add_argument("--management-url", default=management_url(),
                        help="default: $CASEBROKER_MANAGEMENT_URL or this machine's")
    apply_.add_argument("--secrets-dir", required=True,
                        help="new users' passwords go to DIR/<user>.password (mode 0600)")
    apply_.add_argument("--rotate", action="store_true", help="new passwords for all")
    apply_.add_argument("--retire", action="store_true",
                        help="delete the users under the prefix whose desk or agency the "
                        "catalog no longer has (without it they are only named)")

    schema = sub.add_parser("schema", help="print the JSON Schema of every message kind")
    schema.add_argument("--asyncapi", action="store_true",
                        help="print the AsyncAPI document (YAML) instead")
    _common(schema, catalog=False, prefix=True)
    groups = {"rules": rules_sub, "topology": topo_sub, "dossier": dossier_sub}
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `casebroker` console script."""
    try:  # the command modules load here, for most of a second: a Ctrl-C then is one too
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:  # (a review: a traceback of 30 frames)
        return 130
    try:
        logs.configure(verbose=args.verbose)
    except logs.LogSettingError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    pika_log = _quiet_pika(args)
    try:
        if args.command in ("demo", "bench"):
            _reach_rabbitmq()
            pika_log.setLevel(logging.WARNING)
        return int(_dispatch(args) or EXIT_OK)
    except CatalogError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_PROBLEM if args.command == "rules" else EXIT_USAGE
    except (RoutingError, DecodeError, SettingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except CasebrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PROBLEM
    except Exception as e:
        # pika loads only for the commands using it
        from pika.adapters.utils.connection_workflow import AMQPConnectorException
        from pika.exceptions import AMQPError
        # a host name that does not resolve fails in the socket module, under pika; a
        # handshake that times out (a node out of file handles) in pika's connector
        if not isinstance(e, AMQPError | AMQPConnectorException | socket.gaierror):
            raise
        print(f"error: {rabbitmq_problem(e)}", file=sys.stderr)
        return EXIT_PROBLEM


def _quiet_pika(args: argparse.Namespace) -> logging.Logger:
    """pika's logger, quiet but for `run`: the operator commands say in their own words
    what RabbitMQ refused or why it could not be reached (a missing queue, a refused
    login), in one line; pika's own warnings and errors (a traceback per failed
    connection) are for the service, and for the demo and the benchmark once they have
    reached RabbitMQ."""
    pika_log = logging.getLogger("pika")
    pika_log.setLevel(logging.WARNING if args.command == "run" else logging.CRITICAL)
    if not args.verbose:  # each failed attempt is said once, by casebroker, in a line
        from broker.amqp import CONNECT_NARRATORS, OpenGuesses
        for name in CONNECT_NARRATORS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        logging.getLogger("pika.connection").addFilter(OpenGuesses())
    return pika_log


def _reach_rabbitmq() -> None:
    """Connect once and leave: RabbitMQ out of reach, or refusing the login, ends a demo
    or a benchmark in one line before it starts anything (a router, a shovel)."""
    import pika

    from broker.amqp import amqp_urls
    pika.BlockingConnection([pika.URLParameters(u) for u in amqp_urls()]).close()


def rabbitmq_problem(error: Exception) -> str:
    """What RabbitMQ did to a one-shot command, in a line (`run` reconnects instead)."""
    from pika.adapters.utils.connection_workflow import AMQPConnectorException
    from pika.exceptions import (
        AMQPChannelError,
        AMQPConnectionError,
        ConnectionClosedByBroker,
        ProbableAccessDeniedError,
        ProbableAuthenticationError,
    )

    from broker.amqp import amqp_urls, connection_error_text, shown_url
    reply = getattr(error, "reply_text", None)
    if isinstance(error, AMQPConnectionError | AMQPConnectorException | socket.gaierror):
        where = ", ".join(shown_url(u) for u in amqp_urls())
        why = (error.strerror or str(error) if isinstance(error, OSError)
               else connection_error_text(error))
        # reached, and turned away: a login or a virtual host to fix, not the network
        what = ("refused the login" if isinstance(error, ProbableAuthenticationError)
                else "refused the virtual host" if isinstance(error, ProbableAccessDeniedError)
                else "closed the connection" if isinstance(error, ConnectionClosedByBroker)
                else None)
        head = f"RabbitMQ at {where} {what}" if what else f"RabbitMQ unreachable at {where}"
        return f"{head} (CASEBROKER_AMQP_URL)" + (f": {why}" if why else "")
    if isinstance(error, AMQPChannelError) and reply:
        if "inequivalent arg" in str(reply):  # a queue declared by hand or by an old version
            return (f"RabbitMQ refused: {reply} (it cannot change a queue's arguments: see "
                    "docs/RELIABILITY.md, 'A queue declared with other arguments')")
        return f"RabbitMQ refused: {reply}"
    return f"RabbitMQ: {type(error).__name__} {error}".rstrip()


def _dispatch(args: argparse.Namespace) -> int | None:
    if getattr(args, "handler", None) is not None:
        return int(args.handler(args))
    handlers = {"run": _run, "topology": _topology, "rules": _rules, "dossier": _dossier,
                "demo": _demo, "schema": _schema, "users": _users}
    return handlers[args.command](args)


def _topology_of(args: argparse.Namespace) -> Any:
    from broker.topology import Topology

    return Topology.named(getattr(args, "prefix", None))


def _metrics_port() -> int:
    """``CASEBROKER_METRICS_PORT`` (default 9464), refused by its own name: through the
    option's type, a bad one was said as a bad ``--metrics-port`` nobody had typed."""
    from broker.errors import SettingError

    text = os.environ.get("CASEBROKER_METRICS_PORT", "9464")
    try:
        return int(tcp_port(text))
    except argparse.ArgumentTypeError:
        raise SettingError(f"CASEBROKER_METRICS_PORT={text!r}: a TCP port, 0 to 65535 "
                           "(0: no metrics), please") from None


def _run(args: argparse.Namespace) -> int:
    from broker.amqp import ConsumerSettings
    from broker.health import Probes, starting
    from broker.ledger import RUN_LOCK_TIMEOUT_S, Ledger, sole_runner
    from broker.rules.catalog import load_catalog
    from broker.service import Broker
    from monitoring.metrics import Metrics

    port = args.metrics_port if args.metrics_port is not None else _metrics_port()
    settings = ConsumerSettings(prefetch_count=args.prefetch_count, batch_size=args.batch_size,
                                flush_interval_ms=args.flush_interval_ms, hold_s=args.hold_s)
    # a SIGHUP while the catalog loads and the ledger opens (a second or two) would end
    # the process by its default action: remembered, it is a reload once the broker is
    asked: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, _frame: asked.append(signum))
    # a broken catalog or a taken metrics port is said before the ledger is opened: a
    # first start left an empty new SQLite ledger behind
    catalog, metrics = load_catalog(args.catalog), Metrics()
    # SQLite: one run at a time, said before a metrics port the other one holds
    with sole_runner(args.db_url, "`casebroker run`"):
        if port:  # ready: not yet (live: yes, a restart would not help)
            metrics.serve(port, os.environ.get("CASEBROKER_METRICS_ADDR", "127.0.0.1"),
                          starting())
        ledger = Ledger(args.db_url, lock_timeout_s=RUN_LOCK_TIMEOUT_S)
        broker = Broker(args.catalog, _topology_of(args), ledger, settings,
                        metrics=metrics, loaded=catalog)
        signal.signal(signal.SIGHUP, lambda _signum, _frame: broker.reload_soon())
        if asked:
            broker.reload_soon()
        if port:
            metrics.answer_probes(Probes(broker).routes())
        broker.run()
    return EXIT_OK


def _topology(args: argparse.Namespace) -> int:
    from broker.amqp import amqp_urls
    from broker.rules.catalog import load_catalog
    from broker.service import declare_topology

    catalog, topology = load_catalog(args.catalog), _topology_of(args)
    if args.action == "declare":
        n = declare_topology(amqp_urls(), topology, catalog)
        print(f"declared {len(topology.exchanges)} exchanges and {n} queues under "
              f"{topology.prefix!r}")
    else:
        from broker.ops.teardown import delete
        return delete(topology, catalog, args.management_url, args.force)
    return EXIT_OK


def _now() -> datetime:
    """The moment `rules check` looks ahead from (tests move it)."""
    return datetime.now(UTC)


def _rules(args: argparse.Namespace) -> int:
    from broker.rules.catalog import load_catalog

    if args.action == "check":
        try:
            catalog = load_catalog(args.path)
        except CatalogError as e:
            print(f"{len(e.problems)} problem(s):", file=sys.stderr)
            for problem in e.problems:
                print(f"  {problem}", file=sys.stderr)
            return EXIT_PROBLEM
        s = catalog.spec
        # which file: the alert runbooks' `rules check` in a shell with CASEBROKER_CATALOG
        # passed the shipped catalog while the one in force was broken
        print(f"ok: {args.path or 'the shipped catalog'}: {len(s.procedures)} procedures, "
              f"{len(s.agencies)} agencies, {len(s.desks)} desks, {len(s.rules)} rules")
        from broker.calendar import unconfirmed_ahead
        from broker.rules.engine import Engine

        for note in unconfirmed_ahead(Engine(catalog).calendar, _now()):
            print(f"note: {note}.")
        return EXIT_OK
    return _explain(args, load_catalog(args.catalog))


def _explain(args: argparse.Namespace, catalog: Any) -> int:
    from broker.messages import DossierSubmitted, decode
    from broker.rules.engine import Engine

    try:
        body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as e:
        print(f"error: cannot read {args.file}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    message = decode(body, expected=frozenset({"dossier.submitted"}))
    assert isinstance(message, DossierSubmitted)
    received_at = args.at or message.submitted_at
    result = Engine(catalog).explain(message, received_at)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return EXIT_OK
    print(f"procedure   {result['procedure_code']}  {result['procedure_name']}")
    print(f"agency      {' -> '.join(result['steps'])}  (by {result['rule_id']})")
    print(f"boundary    {'boundary-free' if result['boundary_free'] else 'own area'}")
    if result["refusal"]:
        print(f"REFUSED     {result['refusal']}")
    print(f"received    {result['received_at']}\n"
          f"due         {result['due_at'] or 'nothing: refused at intake, closed at once'}")
    if len(result["step_plan"]) > 1:  # a chain: each step at the latest
        for i, step in enumerate(result["step_plan"], 1):
            print(f"  step {i} {step['agency_id']}: {step['amount']:g} "
                  f"{step['unit'].replace('_', ' ')}, due {step['due_at']}"
                  f"{'' if i == 1 else ' if the steps before take all their time'}")
    for r in result["rules_considered"]:
        print(f"  rule {r['rule_id']}: {'MATCH' if r['matched'] else 'no'} ({r['why']})")
    print(f"catalog     {result['catalog_hash']}")
    return EXIT_OK


def _state(text: str) -> int:
    from broker.lifecycle import State

    try:
        return int(State(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a dossier state (1 to 10): {text!r}") from None


def _nothing_due_if_refused_at_intake(row: dict[str, Any]) -> bool:
    """Whether a ledger row is a dossier refused at intake, and if so take its due dates
    out: its desk was told so with no due date, and the dates the ledger keeps for it were
    never in force."""
    from broker.lifecycle import refused_at_intake

    if not refused_at_intake(row["state"], row["seq"]):
        return False
    row["due_at"] = None
    if "step_due_at" in row:
        row["step_due_at"] = None
    return True


def _dossier_list(args: argparse.Namespace) -> int:
    from datetime import UTC

    from broker.ledger import Ledger
    from broker.lifecycle import State, is_overdue

    ledger = Ledger(args.db_url, create=False)
    try:
        now = datetime.now(UTC)
        rows = ledger.list_dossiers(agency=args.agency, desk=args.desk, states=args.state,
                                    overdue_at=now if args.overdue else None,
                                    limit=args.limit + 1)
        strangers = [] if rows else [
            f"{kind} {party}" for kind, party in (("agency", args.agency), ("desk", args.desk))
            if party is not None and not ledger.ever_had(**{kind: party})]
    finally:
        ledger.dispose()
    for stranger in strangers:  # a mistyped id, most likely: said, not a silent 0
        print(f"note: no dossier in this ledger was ever with {stranger}; check the id "
              "(as the catalog spells it, case and dots included)", file=sys.stderr)
    more, rows = len(rows) > args.limit, rows[:args.limit]
    refused_at_intake = {r["code"] for r in rows if _nothing_due_if_refused_at_intake(r)}
    if args.json:
        print(json.dumps({"dossiers": rows, "more": more}, default=json_value))
        return EXIT_OK
    tz = ZoneInfo(args.tz)
    width = max([len("code"), *(len(r["code"]) for r in rows)])
    print(f"{'code':<{width}}  {'state':<26} {'agency (step)':<24} {'intake -> return':<30} "
          f"due ({args.tz})")
    for r in rows:
        state = f"{State(r['state']).name.lower()} ({r['state']})"
        agency = f"{r['agency_id']} ({r['step']})"
        desks = f"{r['intake_desk_id']} -> {r['return_desk_id']}"
        if r["code"] in refused_at_intake:
            print(f"{r['code']:<{width}}  {state:<26} {agency:<24} {desks:<30} "
                  "nothing: refused at intake")
            continue
        due = _local(r["due_at"], tz, seconds=False)
        late = "  overdue" if is_overdue(r["state"], r["due_at"], r["paused_at"], now) else ""
        print(f"{r['code']:<{width}}  {state:<26} {agency:<24} {desks:<30} {due}{late}")
    print(f"{len(rows)} dossier(s)" + (f"; more not shown (--limit {args.limit})" if more
                                       else ""))
    return EXIT_OK


def _dossier(args: argparse.Namespace) -> int:
    from broker.ledger import Ledger
    from broker.lifecycle import State
    from broker.tables import RESULTS, STEP_OWN_DUE, SUPPLEMENTS

    if args.action == "list":
        return _dossier_list(args)
    ledger = Ledger(args.db_url, create=False)
    row = ledger.dossier(args.code)
    submission = submission_id_of(args.code) if row is None else None
    if submission is not None:  # a desk asking after what it sent
        opened = ledger.states_for_submissions([submission])
        if not opened:
            return _unopened_submission(ledger, submission, args)
        row = ledger.dossier(opened[submission][0])
    if row is None:
        print(f"error: no dossier {args.code!r} in {ledger.url.split('@')[-1]}", file=sys.stderr)
        return EXIT_PROBLEM
    # the ledger keeps the applicant for the agencies, and the parties' words; the
    # operator's view leaves them out, in JSON as in text
    history = [dict(e, detail=_without_free_text(e)) for e in ledger.history(row["code"])]
    row.pop("submission", None)
    flags = row["flags"] if isinstance(row["flags"], dict) else {}
    row["flags"] = {k: len(v) if k in (SUPPLEMENTS, RESULTS) and isinstance(v, list) else v
                    for k, v in flags.items()}
    refused_at_intake = _nothing_due_if_refused_at_intake(row)
    if args.json:
        print(json.dumps({"dossier": row, "history": history}, default=json_value,
                         ensure_ascii=False))
        return EXIT_OK
    print(f"{row['code']}  {State(row['state']).name.lower()} ({row['state']})  "
          f"procedure {row['procedure_code']}")
    print(f"  desk {row['intake_desk_id']} -> return at {row['return_desk_id']}  "
          f"({row['channel']}, {'boundary-free' if row['boundary_free'] else 'own area'})")
    steps = " -> ".join(s["agency_id"] for s in row["steps"])
    tz = ZoneInfo(args.tz)
    step_due = ("" if row["finished_at"] is not None or row["step_due_at"] is None
                else f"; this step due {_local(row['step_due_at'], tz, seconds=False)}")
    own = (row["flags"] or {}).get(STEP_OWN_DUE)
    if step_due and own is not None:  # handed on late: told the dossier's due date
        step_due += f", its own time to {_local(datetime.fromisoformat(own), tz, seconds=False)}"
    if row["paused_at"] is not None and row["finished_at"] is None:
        step_due += (f"; clock stopped since {_local(row['paused_at'], tz, seconds=False)} "
                     "for a supplement: the due dates move by the time it stays stopped")
    print(f"  agency {row['agency_id']} (step {row['step']} of {len(row['steps'])}: {steps}"
          f"{step_due})")

    due = "nothing: refused at intake" if refused_at_intake else _local(row["due_at"], tz)
    print(f"  received {_local(row['received_at'], tz)}  due {due} "
          f"({args.tz})  rule {row['rule_id']}")
    print("  history:")
    for e in history:
        hand = f"  {e['from_agency'] or ''} -> {e['to_agency']}" if e["to_agency"] else ""
        print(f"    {e['seq']:>3} {_local(e['at'], tz)}  {e['kind']:<18} "
              f"{e['state_from']}->{e['state_to']}  by {e['actor']}{hand}{_step_end(e, tz)}"
              f"{_event_note(e, tz)}")
    return EXIT_OK


#: how much later than its event an update must be applied for `dossier show` to say when
RECORDED_LATE = timedelta(minutes=1)


#: what the operator's view shows of free text a party wrote (a reason may name the
#: citizen, or give a phone number)
WITHHELD = "<withheld: a party's own words>"


def _without_free_text(event: dict[str, Any]) -> Any:
    """An event's detail as the operator's view shows it: the names of documents and what
    was asked for by how many (a file is often named after its citizen), and a reason a
    party wrote (an agency, a desk, an operator refusing at intake) as withheld. The
    router's own reason for a refusal at intake stays: its words, about the catalog."""
    detail = event["detail"]
    if not isinstance(detail, dict):
        return detail
    shown = {k: len(v) if k in ("documents", "requested_documents") and isinstance(v, list)
             else v for k, v in detail.items()}
    router_said = event["seq"] == 1 and event["kind"] in ("received", "refused")
    if isinstance(shown.get("reason"), str) and shown["reason"] and not router_said:
        shown["reason"] = WITHHELD
    return shown


def _event_note(event: dict[str, Any], tz: ZoneInfo) -> str:
    """What else the process-control sheet keeps of an event, in its words: no free text
    (a reason may name someone), only numbers and times."""
    d = event["detail"] if isinstance(event["detail"], dict) else {}

    def at(key: str) -> str:
        return _local(datetime.fromisoformat(d[key]), tz, seconds=False)

    notes = []
    if d.get("satisfaction") is not None:
        notes.append(f"satisfaction {d['satisfaction']}")
    def counted(key: str) -> int:  # the operator's view, and `ledger prune`, keep how many
        value = d.get(key) or 0
        return value if isinstance(value, int) else len(value)

    if event["kind"] == "request_supplement":
        notes.append(f"{counted('requested_documents')} document(s) requested")
    if event["kind"] == "supplement":  # its due date is the one the pause moved
        notes.append(f"{counted('documents')} document(s) brought")
    if event["kind"] in ("supplement", "at_risk", "overdue") and d.get("due_at"):
        notes.append(f"due {at('due_at')}")
    if event["kind"] in ("step_at_risk", "step_overdue") and d.get("due_at"):
        notes.append(f"step {d.get('step')} due {at('due_at')}")
    if d.get("told"):  # a step late with its dossier: no notice of its own
        notes.append(f"told {d['told']}")
    if d.get("appointment"):
        notes.append(f"apology: new appointment {at('appointment')}")
    # dated by its sender, applied later: said when later by a minute or more (what the
    # line shows); the sender's clock runs a few milliseconds ahead of every update's
    if d.get("recorded_at") and (datetime.fromisoformat(d["recorded_at"]) - event["at"]
                                 >= RECORDED_LATE):
        notes.append(f"recorded {at('recorded_at')}")
    return f"  ({'; '.join(notes)})" if notes else ""


def _step_end(event: dict[str, Any], tz: ZoneInfo) -> str:
    """For an event that ended a step (recorded with its due date): when that step was
    due, and whether it ended early, on time or late."""
    from broker.lifecycle import LEGAL_TIMEZONE, timeliness
    from broker.tables import STEP_OWN_DUE

    detail = event["detail"] if isinstance(event["detail"], dict) else {}
    if "step_due_at" not in detail:
        return ""
    due = datetime.fromisoformat(detail["step_due_at"])
    shown = f"step {detail['step']} due {_local(due, tz, seconds=False)}"
    if (own := detail.get(STEP_OWN_DUE)) is not None:  # handed on late: its own time
        due = datetime.fromisoformat(own)
        shown += f", its own time to {_local(due, tz, seconds=False)}"
    # judged by Vietnam's dates as the report judges it, whatever zone the times are shown in
    when = timeliness(event["at"], due, ZoneInfo(LEGAL_TIMEZONE)).replace("_", " ")
    return f"  ({shown}: {when})"


def _local(value: datetime, tz: ZoneInfo, *, seconds: bool = True) -> str:
    """A ledger time as the operator reads it, in ``tz``."""
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def submission_id_of(text: str) -> str | None:
    """``text`` as a submission id (a UUID, written as the contract writes it), or None."""
    from uuid import UUID

    try:
        return str(UUID(text))
    except ValueError:
        return None


def _unopened_submission(ledger: Ledger, submission: str, args: argparse.Namespace) -> int:
    """What became of a submission that opened no dossier: each delivery of it that was
    dead-lettered or triaged, and where to look at it, and its refusal at intake if an
    operator refused it; exit 1 when the ledger has none of these."""
    from broker.messages import shown_id, shown_message_id

    # ids as the dead-letters commands show (and take) them: a desk's own message id, and
    # the notice ids made from it, may hold a name or an id number, and a desk id the
    # catalog lacks (refused --without-notice) a phone number
    deliveries = [dict(d, message_id=shown_message_id(d["message_id"]))
                  for d in ledger.unopened_submission(submission)]
    refusal = ledger.refusal(submission)
    if refusal is not None:
        # the reason is the desk's or the operator's own words, for the citizen
        refusal.update({k: shown_message_id(refusal[k]) for k in ("message_id", "notice_id")}
                       | {k: shown_id(refusal[k]) for k in ("desk_id", "refused_by")}
                       | {"reason": WITHHELD})
    if args.json:
        print(json.dumps({"submission_id": submission, "dossier": None,
                          "deliveries": deliveries, "refusal": refusal},
                         default=json_value, ensure_ascii=False))
    elif deliveries or refusal:
        tz = ZoneInfo(args.tz)

        print(f"submission {submission}: no dossier opened")
        lines = [(d["processed_at"], f"  {_local(d['processed_at'], tz)}  {d['outcome']:<30} "
                                     f"message {d['message_id']}") for d in deliveries]
        if refusal:
            told = f"desk {refusal['desk_id']} told as {refusal['notice_id']}"
            how = (f"withdrawn at intake (7) by the citizen at desk {refusal['refused_by']}: "
                   f"told as {refusal['notice_id']}" if refusal["state"] == 7
                   else f"refused at intake (3) by {refusal['refused_by']}: {told}")
            lines.append((refusal["refused_at"], f"  {_local(refusal['refused_at'], tz)}  "
                                                 f"{how}"))
        for _, line in sorted(lines, key=lambda x: x[0]):  # in time order, as they happened
            print(line)
        if not refusal:
            print("  what each reason means and what to do: docs/RELIABILITY.md; the message "
                  "itself, until replayed: casebroker dead-letters show <message id>")
    if not deliveries and not refusal:
        print(f"error: no dossier and no dead-lettered or triaged delivery of submission "
              f"{submission} in {ledger.url.split('@')[-1]} (not sent, or still in the "
              "intake queue)", file=sys.stderr)
        return EXIT_PROBLEM
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from adapters.demo import DemoSettings, run_demo

    summary = run_demo(DemoSettings(dossiers=args.dossiers, seed=args.seed, rate=args.rate,
                                    catalog=args.catalog, db_url=args.db_url,
                                    stall_timeout_s=args.timeout_s, keep=args.keep,
                                    parallel=args.parallel,
                                    progress=not args.json or sys.stderr.isatty()))
    if args.json:
        print(json.dumps(summary))
    else:
        from adapters.demo import format_summary

        print(format_summary(summary))
    finished = summary["returned"] + summary["refused"] == summary["submitted"]
    clean = summary["lost"] == 0 and summary["duplicates"] == 0
    return EXIT_OK if finished and clean else EXIT_PROBLEM


def _users(args: argparse.Namespace) -> int:
    from broker.rules.catalog import load_catalog
    from broker.security import Management, apply, grants, stale

    planned = grants(_topology_of(args), load_catalog(args.catalog))
    if args.action == "plan":
        if args.json:
            print(json.dumps([g.__dict__ for g in planned], ensure_ascii=False))
        else:
            for g in planned:
                print(f"{g.user:<40} {g.kind:<6} write {g.write}  read {g.read}")
        return EXIT_OK
    api = Management.from_url(args.management_url)
    result = apply(planned, api, Path(args.secrets_dir), rotate=args.rotate)
    print(f"{result['users']} users with permissions; {result['created']} created "
          f"(passwords in {args.secrets_dir})")
    left = stale(planned, api, _topology_of(args))
    for user in left:
        if args.retire:
            api.delete_user(user)
            # its password opens nothing now (a review: the file stayed)
            (Path(args.secrets_dir) / f"{user}.password").unlink(missing_ok=True)
            print(f"retired {user}: its desk or agency is not in the catalog")
    if left and not args.retire:
        print(f"warning: {len(left)} user(s) whose desk or agency is not in the catalog "
              f"still hold their permissions: {', '.join(left)} (--retire deletes them)",
              file=sys.stderr)
    return EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    if args.asyncapi:
        import yaml

        from broker.contract import asyncapi

        print(yaml.safe_dump(asyncapi(_topology_of(args)), sort_keys=False,
                             allow_unicode=True), end="")
        return EXIT_OK
    from broker.messages import json_schemas

    print(json.dumps(json_schemas(), indent=2, ensure_ascii=False))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
