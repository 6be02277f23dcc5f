"""Every allowed and every forbidden transition of the one table."""

from __future__ import annotations

import itertools

import pytest

from broker.errors import TransitionRefused
from broker.lifecycle import OPEN_STATES, TERMINAL_STATES, TRANSITIONS, Event, State, apply

S, E = State, Event
ALLOWED = {
    (S.SUBMITTED, E.RECEIVE): S.RECEIVED, (S.SUBMITTED, E.REFUSE): S.REFUSED,
    (S.RECEIVED, E.REFUSE): S.REFUSED, (S.RECEIVED, E.ACCEPT): S.PROCESSING,
    (S.RECEIVED, E.PROCESS): S.PROCESSING, (S.RECEIVED, E.REQUEST_SUPPLEMENT):
        S.SUPPLEMENT_REQUESTED,
    (S.RECEIVED, E.RESOLVE): S.RESOLVED, (S.RECEIVED, E.HAND_OFF): S.PROCESSING,
    (S.PROCESSING, E.PROCESS): S.PROCESSING, (S.PROCESSING, E.ACCEPT): S.PROCESSING,
    (S.PROCESSING, E.HAND_OFF): S.PROCESSING,
    (S.PROCESSING, E.REQUEST_SUPPLEMENT): S.SUPPLEMENT_REQUESTED,
    (S.PROCESSING, E.REQUIRE_PAYMENT): S.FINANCIAL_OBLIGATION,
    (S.PROCESSING, E.STOP): S.STOPPED, (S.PROCESSING, E.RESOLVE): S.RESOLVED,
    (S.SUPPLEMENT_REQUESTED, E.SUPPLEMENT): S.PROCESSING,
    (S.SUPPLEMENT_REQUESTED, E.STOP): S.STOPPED,
    (S.FINANCIAL_OBLIGATION, E.PROCESS): S.PROCESSING,
    (S.FINANCIAL_OBLIGATION, E.RESOLVE): S.RESOLVED,
    (S.FINANCIAL_OBLIGATION, E.HAND_OFF): S.PROCESSING,
    (S.FINANCIAL_OBLIGATION, E.STOP): S.STOPPED,
    (S.RESOLVED, E.RETURN): S.RETURNED,
    (S.SUBMITTED, E.WITHDRAW): S.WITHDRAWN, (S.RECEIVED, E.WITHDRAW): S.WITHDRAWN,
    (S.PROCESSING, E.WITHDRAW): S.WITHDRAWN, (S.SUPPLEMENT_REQUESTED, E.WITHDRAW): S.WITHDRAWN,
    (S.FINANCIAL_OBLIGATION, E.WITHDRAW): S.WITHDRAWN,
}


def test_table_is_exactly_the_documented_one() -> None:
    assert TRANSITIONS == ALLOWED


@pytest.mark.parametrize(("state", "event"), sorted(ALLOWED))
def test_allowed(state: State, event: Event) -> None:
    assert apply(state, event) == ALLOWED[(state, event)]


FORBIDDEN = sorted(set(itertools.product(State, Event)) - set(ALLOWED))


@pytest.mark.parametrize(("state", "event"), FORBIDDEN)
def test_forbidden(state: State, event: Event) -> None:
    with pytest.raises(TransitionRefused):
        apply(state, event)


def test_terminal_states_allow_nothing() -> None:
    for state, event in itertools.product(TERMINAL_STATES, Event):
        assert (state, event) not in TRANSITIONS


def test_withdraw_from_every_open_state_only() -> None:
    assert {s for (s, e) in TRANSITIONS if e == E.WITHDRAW} == set(OPEN_STATES)
    with pytest.raises(TransitionRefused):
        apply(S.RESOLVED, E.WITHDRAW)
