"""Catalog file format v1: loading with line numbers, and whole-catalog validation.

A catalog is one YAML file per province: calendar settings, agencies, desks,
procedures and optional rules (see DESIGN.md §6). :func:`load_catalog` reports
every problem at once, each with its file and line, as a
:class:`~broker.errors.CatalogError`; it never returns a half-valid catalog.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from broker.calendar import DurationUnit
from broker.errors import CatalogError, CatalogProblem

SHIPPED_CATALOG = Path(__file__).parent / "catalogs" / "daklak.yaml"

PartyId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
AreaCode = Annotated[str, Field(pattern=r"^\d{2}(\d{3})?$")]
ProcedureCode = Annotated[str, Field(pattern=r"^\d\.\d{6}$")]
Scalar = str | int | float | bool


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Agency(_Model):
    """A competent authority; ``serves`` lists the area codes it is competent for."""

    id: PartyId
    name: str
    serves: list[AreaCode] = Field(default_factory=list)


class Desk(_Model):
    """An intake and return point; ``unit`` is the agency (or agencies) that owns it."""

    id: PartyId
    name: str
    area: AreaCode | None = None
    unit: Annotated[list[PartyId], BeforeValidator(_as_list)] = Field(default_factory=list)
    channel: Literal["in_person", "online", "postal", "agent"] = "in_person"


class Processing(_Model):
    """A legal processing time. Not 0: every dossier would be due the moment it was
    received, late a second later, its desk told to apologise."""

    amount: Annotated[int, Field(ge=1, le=3650)]
    unit: DurationUnit = DurationUnit.WORKING_DAYS


class FixedAgency(_Model):
    agency: PartyId
    processing: Processing | None = None


class ByArea(_Model):
    by_area: Literal["applicant", "subject"]
    processing: Processing | None = None


class AtIntake(_Model):
    at_intake: Literal[True] = True
    processing: Processing | None = None


Step = FixedAgency | ByArea | AtIntake


def _step(value: Any) -> Any:
    return {"at_intake": True} if value == "at_intake" else value


#: the key that says which kind of competence a mapping is (its union member's tag)
_KINDS = (("chain", "Chain"), ("agency", "FixedAgency"), ("by_area", "ByArea"),
          ("at_intake", "AtIntake"))


_KIND_TAGS = frozenset(tag for _, tag in _KINDS) | {"Scalar", "ScalarList", "Range"}


def _kind(value: Any) -> str | None:
    """Which kind a competence is, by its key: so that a bad one is reported for what it
    is ("agency: should match ...") rather than as every other kind's missing field."""
    if isinstance(value, dict):
        return next((tag for key, tag in _KINDS if key in value), None)
    return None


def _by_kind(what: str) -> Discriminator:
    """Tells a union's members apart by :func:`_kind`; their tags are their class names,
    which problem reports leave out of a field's path."""
    return Discriminator(_kind, custom_error_type="competence_kind", custom_error_message=what)


StepField = Annotated[
    Annotated[FixedAgency, Tag("FixedAgency")] | Annotated[ByArea, Tag("ByArea")]
    | Annotated[AtIntake, Tag("AtIntake")],
    _by_kind("a chain step is {agency: ID}, {by_area: applicant|subject} or at_intake "
             "(chains do not nest)"),
    BeforeValidator(_step)]


class Chain(_Model):
    chain: Annotated[list[StepField], Field(min_length=2, max_length=10)]


Competence = Annotated[
    Annotated[FixedAgency, Tag("FixedAgency")] | Annotated[ByArea, Tag("ByArea")]
    | Annotated[AtIntake, Tag("AtIntake")] | Annotated[Chain, Tag("Chain")],
    _by_kind("a competence is {agency: ID}, {by_area: applicant|subject}, at_intake or "
             "{chain: [...]}"),
    BeforeValidator(_step)]


class Range(_Model):
    """A numeric range predicate: ``{min: 0, max: 100}`` (both bounds inclusive)."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Range:
        if self.min is None and self.max is None:  # matched every number, silently
            raise ValueError("a range needs min, max or both: {} would match every number")
        return self


def _matcher_kind(value: Any) -> str:
    """Which form a rule's value has, by its shape: a mapping is a range, a list a list;
    tried in turn, a range written wrong was reported as "should be a valid string"."""
    if isinstance(value, dict | Range):
        return "Range"
    return "ScalarList" if isinstance(value, list) else "Scalar"


Matcher = Annotated[
    Annotated[Scalar, Tag("Scalar")] | Annotated[list[Scalar], Tag("ScalarList")]
    | Annotated[Range, Tag("Range")],
    Discriminator(_matcher_kind)]


class Rule(_Model):
    """``when`` all predicates hold, ``route`` decides competence; first match wins."""

    id: Annotated[str, Field(min_length=1, max_length=80)]
    when: dict[str, Matcher] = Field(default_factory=dict)
    route: Competence
    description: str | None = None


class Procedure(_Model):
    """One procedure of the national catalogue as the province runs it."""

    code: ProcedureCode
    name: str
    processing: Processing
    competence: Competence
    boundary_free: bool = False
    boundary_free_from: date | None = None
    sample: bool = False

    def open_for_boundary_free(self, on: date) -> bool:
        """Whether a desk outside the competent agency may receive it on ``on``."""
        return self.boundary_free and (self.boundary_free_from is None
                                       or self.boundary_free_from <= on)


class CatalogFile(_Model):
    """The whole catalog file (format v1)."""

    catalog: Annotated[str, Field(min_length=1)]
    format: Literal[1] = 1
    calendar: str = "VN"
    timezone: str = "Asia/Ho_Chi_Minh"
    office_hours: list[str] = Field(default_factory=lambda: ["07:00-11:30", "13:30-17:00"])
    #: "HH:MM": a dossier received from then on starts its clock the next working morning
    #: (None: from closing)
    next_day_after: str | None = None
    #: a dossier whose submitted_at is more days before the broker's clock is triaged (a
    #: desk clock reset to a past year would otherwise date its code and due date there)
    max_backdate_days: Annotated[int, Field(ge=1)] | None = None
    extra_holidays: list[date] = Field(default_factory=list)
    extra_workdays: list[date] = Field(default_factory=list)
    #: years whose government decree on days off the province has held against `rules
    #: calendar` and found nothing to add: no warning for them (broker/calendar.py)
    decree_checked: list[Annotated[int, Field(ge=1900, le=2999)]] = Field(
        default_factory=list)
    agencies: list[Agency]
    desks: list[Desk]
    procedures: list[Procedure]
    rules: list[Rule] = Field(default_factory=list)


#: predicate keys a rule's ``when`` may use; ``attributes.<name>`` is also allowed
RULE_FIELDS = frozenset({"procedure_code", "applicant.kind", "applicant.ward_code",
                         "subject.ward_code", "channel", "desk_id", "desk.area"})


@dataclass(frozen=True)
class Catalog:
    """A loaded, validated catalog with its content hash and source lines."""

    spec: CatalogFile
    content_hash: str
    path: str

    @property
    def agency_ids(self) -> list[str]:
        return [a.id for a in self.spec.agencies]

    @property
    def desk_ids(self) -> list[str]:
        return [d.id for d in self.spec.desks]


class _LineLoader(yaml.SafeLoader):
    """A YAML loader that remembers the line of every mapping."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping: dict[Any, Any] = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    # each key's own line: a problem with one field is reported where that field is
    mapping["__keys__"] = {loader.construct_object(k): k.start_mark.line + 1
                           for k, _ in node.value}
    # and the line of each item of a list it holds: an item that is no mapping has none
    mapping["__items__"] = {loader.construct_object(k): [i.start_mark.line + 1 for i in v.value]
                            for k, v in node.value if isinstance(v, yaml.SequenceNode)}
    return mapping


def _reject_duplicate_keys(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.MarkedYAMLError(problem=f"duplicate key {key!r}",
                                       problem_mark=key_node.start_mark)
        seen.add(key)
    return _construct_mapping(loader, node)


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _reject_duplicate_keys)


def _timestamp(loader: _LineLoader, node: yaml.ScalarNode) -> Any:
    """A YAML date or time; one that looks like a date but is none (2026-02-30) stays
    text, which the schema then refuses at its field's line, beside every other problem
    (PyYAML raised a bare ValueError: a traceback, then a problem that hid the rest)."""
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except ValueError:
        return node.value


_LineLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp)


def _strip_lines(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_lines(v) for k, v in value.items()
                if k not in ("__line__", "__keys__", "__items__")}
    if isinstance(value, list):
        return [_strip_lines(v) for v in value]
    return value


def _line_of(raw: Any, loc: tuple[int | str, ...]) -> int | None:
    """The line of a validation error's field: its key's, else the innermost mapping's on
    its path (a field missing from a mapping is reported at the mapping)."""
    line = raw.get("__line__") if isinstance(raw, dict) else None
    node, items = raw, None
    for part in loc:
        if isinstance(node, dict) and part in node.get("__keys__", {}):
            line = node["__keys__"][part]
            items = node.get("__items__", {}).get(part)
        elif isinstance(node, list) and items is not None and isinstance(part, int) \
                and 0 <= part < len(items):
            line = items[part]
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
        if isinstance(node, dict) and "__line__" in node:
            line = node["__line__"]
    return line


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load and validate a catalog file (the shipped Đắk Lắk one when path is None)."""
    file = Path(path) if path is not None else SHIPPED_CATALOG
    name = str(file)
    try:
        data = file.read_bytes()
    except OSError as e:
        raise CatalogError([CatalogProblem(name, None, f"cannot read: {e.strerror}")]) from e
    return parse_catalog(data, name)


def parse_catalog(data: bytes, name: str = "<catalog>") -> Catalog:
    """Validate catalog bytes; raise CatalogError listing every problem.

    Format problems do not hide the semantic ones: what they are in is left out and the
    rest is checked too (:func:`_without_bad_entries`).
    """
    try:
        raw = yaml.load(data, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e)
        raise CatalogError([CatalogProblem(name, line, f"YAML: {problem}")]) from None
    if not isinstance(raw, dict):
        raise CatalogError([CatalogProblem(name, 1, "a catalog is a YAML mapping")])
    from broker.rules.validate import check_catalog

    plain = _strip_lines(raw)
    try:
        spec = CatalogFile.model_validate(plain)
    except ValidationError as e:
        problems = _validation_problems(e, raw, name)
        rest = _without_bad_entries(e, plain)
        if rest is not None:
            sound, dropped = rest
            problems += check_catalog(sound, raw, name, dropped=dropped)
        raise CatalogError(sorted(problems, key=lambda p: p.line or 0)) from None
    problems = check_catalog(spec, raw, name)
    if problems:
        raise CatalogError(problems)
    return Catalog(spec=spec, content_hash=hashlib.sha256(data).hexdigest()[:16], path=name)


#: the top-level lists whose entries a format problem leaves out of the semantic checks
ENTRY_LISTS = ("agencies", "desks", "procedures", "rules")


def _without_bad_entries(error: ValidationError, plain: dict[str, Any]
                         ) -> tuple[CatalogFile, dict[str, set[int]]] | None:
    """The catalog without what the format problems are in, and the original indexes of
    the entries left out per list; None when a problem is in a required field or a
    required list as a whole, which leaves nothing sound to check.

    So that one round of ``rules check`` shows the semantic problems too: an entry with a
    bad field is left out, and so is an optional top-level field (its default stands in,
    and the checks find nothing wrong with a default) or a key the format does not know.
    """
    dropped: dict[str, set[int]] = {}
    bad_fields: set[str] = set()
    for err in error.errors(include_input=False, include_url=False):
        loc = err["loc"]
        if len(loc) >= 2 and loc[0] in ENTRY_LISTS and isinstance(loc[1], int):
            dropped.setdefault(loc[0], set()).add(loc[1])
        elif loc and isinstance(loc[0], str) and not _is_required(loc[0]):
            bad_fields.add(loc[0])
        else:
            return None
    rest = {k: v for k, v in plain.items() if k not in bad_fields}
    for section, indexes in dropped.items():
        rest[section] = [e for i, e in enumerate(plain[section]) if i not in indexes]
    try:
        return CatalogFile.model_validate(rest), dropped
    except ValidationError:
        return None  # leaving entries out should leave nothing wrong; if not, say no more


def _is_required(field: str) -> bool:
    """Whether a top-level field must be there (a key the format does not know need not)."""
    info = CatalogFile.model_fields.get(field)
    return info is not None and info.is_required()


def _data_path(raw: Any, loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """The part of an error's path that is in the file, up to the first union member's
    name (``str``, ``Range``): the alternatives of one value are one problem. A kind of
    competence is no alternative (only that kind was tried): its fields count."""
    node, path = raw, []
    for part in loc:
        if part in _KIND_TAGS or str(part).startswith("function-"):  # a validator's name
            continue
        in_file = (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node))
        if not in_file:  # (a string is indexable, but not a place in the file)
            break
        node = node[part]
        path.append(part)
    return tuple(path)


def _validation_problems(error: ValidationError, raw: Any, name: str) -> list[CatalogProblem]:
    """One problem per bad field, every one of them; a value that fits none of a union's
    alternatives (a rule's matcher) is reported once, for the first."""
    seen: set[tuple[Any, ...]] = set()
    problems = []
    for err in error.errors(include_input=False, include_url=False):
        key = _data_path(raw, err["loc"])  # where in the file, without member names
        if err["type"] == "missing":  # the field that is not there, named after its path
            key += (err["loc"][-1],)
        if key in seen:
            continue
        seen.add(key)
        where = ".".join(str(p) for p in key)
        problems.append(CatalogProblem(name, _line_of(raw, key), f"{where}: {err['msg']}"))
    return problems
