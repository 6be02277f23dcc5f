"""Rule predicates: how a ``when`` key reads the dossier, and how a matcher tests it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from broker.messages import DossierSubmitted
from broker.rules.catalog import Desk, Matcher, Range

Getter = Callable[[DossierSubmitted, Desk], Any]
_GETTERS: dict[str, Getter] = {
    "procedure_code": lambda d, _: d.procedure_code,
    "applicant.kind": lambda d, _: d.applicant.kind,
    "applicant.ward_code": lambda d, _: d.applicant.ward_code,
    "subject.ward_code": lambda d, _: d.subject.ward_code if d.subject else None,
    "channel": lambda d, _: d.channel.value,
    "desk_id": lambda d, _: d.desk_id,
    "desk.area": lambda _, desk: desk.area,
}


def getter(key: str) -> Getter:
    """The function reading a rule key's value from a dossier and its intake desk."""
    if key.startswith("attributes."):
        name = key.removeprefix("attributes.")
        return lambda d, _: d.attributes.get(name)
    return _GETTERS[key]


def _same(a: Any, b: Any) -> bool:
    # True == 1 in Python; a catalog saying `true` must not match the number 1
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def predicate(matcher: Matcher) -> tuple[Callable[[Any], bool], str]:
    """A matcher compiled to a test of one value, with its text for explain."""
    if isinstance(matcher, Range):
        lo, hi = matcher.min, matcher.max

        def in_range(v: Any) -> bool:
            if isinstance(v, bool) or not isinstance(v, int | float):
                return False
            return (lo is None or v >= lo) and (hi is None or v <= hi)

        return in_range, f"in [{lo}, {hi}]"
    if isinstance(matcher, list):
        options = list(matcher)
        return (lambda v: any(_same(v, o) for o in options)), f"in {options}"
    return (lambda v: _same(v, matcher)), f"== {matcher!r}"
