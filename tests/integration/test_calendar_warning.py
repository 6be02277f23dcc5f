"""`casebroker run` warns, at start and on each reload, of a year ahead whose days off
no government decree known to the holidays package confirms (broker/calendar.py); and its
gauge, read at each scrape, names that year while it is ahead (the alert's source)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from broker.calendar import decrees_known_until
from tests.conftest import RunningBroker, wait_for
from tests.integration.conftest import FakeClock

LAST = decrees_known_until("VN")


def _unconfirmed_year(running: RunningBroker) -> float | None:
    return running.broker.metrics.registry.get_sample_value(
        "casebroker_calendar_unconfirmed_year")


def _calendar_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "broker.service" and r.levelno == logging.WARNING
            and r.getMessage().startswith("calendar: ")]


def test_run_and_reload_warn_of_an_unconfirmed_year_ahead(
        start_broker: Callable[..., RunningBroker], clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    assert LAST is not None
    caplog.set_level(logging.INFO, logger="broker.service")
    clock.set(f"{LAST}-11-25 09:00")   # a 30-working-day dossier is due next January
    running = start_broker()
    [warning] = wait_for(lambda: _calendar_warnings(caplog), what="the start-up warning")
    assert warning.startswith(f"calendar: {LAST + 1}'s government decree is not in the")
    assert _unconfirmed_year(running) == LAST + 1
    assert running.broker.reload()
    assert _calendar_warnings(caplog) == [warning, warning]


def test_no_warning_while_every_year_ahead_is_confirmed(
        start_broker: Callable[..., RunningBroker], clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    assert LAST is not None
    caplog.set_level(logging.INFO, logger="broker.service")
    clock.set(f"{LAST}-05-04 09:00")
    running = start_broker()
    # the warning comes before this line of the start-up log, or not at all
    wait_for(lambda: any(r.getMessage().startswith("senders ") for r in caplog.records),
             what="the start-up log")
    assert running.broker.reload()
    assert _calendar_warnings(caplog) == []
    assert _unconfirmed_year(running) == 0
    # months later, the same router: the next year in view is said by the gauge, which
    # each scrape reads, where the log warns only at a start or a reload
    clock.set(f"{LAST}-11-25 09:00")
    assert _unconfirmed_year(running) == LAST + 1


def test_the_office_day_gauge_follows_the_catalogs_calendar_at_each_scrape(
        start_broker: Callable[..., RunningBroker], clock: FakeClock) -> None:
    """``casebroker_office_open``, which the alert on parties not collecting their queues
    waits for, is read from the catalog in force and the router's clock at each scrape."""
    running = start_broker()

    def office_open() -> float | None:
        return running.broker.metrics.registry.get_sample_value("casebroker_office_open")

    assert office_open() == 1  # Wednesday 09:00 (the clock's start)
    clock.set("2026-11-25 12:15")
    assert office_open() == 1  # lunch: still the office day
    clock.set("2026-11-25 17:00")
    assert office_open() == 0  # closed
    clock.set("2026-11-28 09:00")
    assert office_open() == 0  # Saturday
    clock.set("2027-02-08 09:00")
    assert office_open() == 0  # Monday, but Tết (the law's days, whatever the decree)
