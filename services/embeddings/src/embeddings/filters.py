"""Metadata filters in the Mongo-style syntax of Pinecone and Chroma, and their SQL.

    {"topic": "pets", "year": {"$gte": 2020}, "$or": [{"lang": {"$in": ["en", "fr"]}}, ...]}

Grammar (anything else is an InvalidFilter naming the place and the problem):

    filter    := {clause, ...}                        all clauses must hold (AND)
    clause    := field: scalar                        short for {"$eq": scalar}
               | field: {op: operand, ...}            all operators must hold
               | "$and" | "$or": [filter, ...]        at least one filter
    op        := $eq | $ne: scalar    $in | $nin: [scalar, ...]    $gt | $gte | $lt | $lte: number
    scalar    := string | number | boolean

Fields are top-level metadata keys. `$ne` and `$nin` also match documents without the
field (as in MongoDB); every other operator needs the field to be present. Numbers compare
as numbers (2020 equals 2020.0); a range operator never matches a non-number.

A filter is checked once, before any work (parse_filter), into a tree of AllOf, AnyOf and
Compare; the repository asks it for its condition on the documents' metadata column (`on`)
and runs it. The condition is built with SQLAlchemy expressions only: field names and
values are always bound parameters, never part of the SQL text.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, func, not_, or_
from sqlalchemy.dialects.postgresql import JSONB

from embeddings.errors import InvalidFilter
from embeddings.schemas import clean

MAX_DEPTH = 8
MAX_CLAUSES = 100
MAX_LIST = 100
MAX_FIELD = 256
MAX_STRING = 1024
RANGE = {"$gt": "__gt__", "$gte": "__ge__", "$lt": "__lt__", "$lte": "__le__"}
OPERATORS = ("$eq", "$ne", "$in", "$nin", *RANGE)

Scalar = str | int | float | bool


class Filter(ABC):
    """A checked filter: its SQL condition on a JSONB column, for the repository to run."""

    @abstractmethod
    def on(self, column: Any) -> ColumnElement[bool]: ...


@dataclass(frozen=True)
class AllOf(Filter):
    parts: tuple[Filter, ...]

    def on(self, column: Any) -> ColumnElement[bool]:
        return and_(*(part.on(column) for part in self.parts))


@dataclass(frozen=True)
class AnyOf(Filter):
    parts: tuple[Filter, ...]

    def on(self, column: Any) -> ColumnElement[bool]:
        return or_(*(part.on(column) for part in self.parts))


@dataclass(frozen=True)
class Compare(Filter):
    """`field op operand`: operand a scalar, a tuple of them ($in, $nin), a number (ranges)."""

    field: str
    op: str
    operand: Scalar | tuple[Scalar, ...]

    def on(self, column: Any) -> ColumnElement[bool]:
        value = column[bindparam(None, self.field)]
        if self.op in ("$eq", "$ne"):
            bound = _jsonb(self.operand)
            same: ColumnElement[bool] = value == bound
            return same if self.op == "$eq" else value.is_distinct_from(bound)
        if self.op in ("$in", "$nin"):
            assert isinstance(self.operand, tuple)
            members = value.in_([_jsonb(v) for v in self.operand])
            return members if self.op == "$in" else or_(value.is_(None), not_(members))
        compare = getattr(value, RANGE[self.op])(_jsonb(self.operand))
        return and_(func.jsonb_typeof(value) == "number", compare)


class _Parser:
    def __init__(self) -> None:
        self.clauses = 0

    def filter(self, node: Any, path: str, depth: int) -> Filter:
        if not isinstance(node, dict):
            raise InvalidFilter(f"{path}: a filter is an object, not {_kind(node)}.")
        if depth > MAX_DEPTH:
            raise InvalidFilter(f"{path}: filters nest at most {MAX_DEPTH} levels deep.")
        if not node:
            raise InvalidFilter(f"{path}: an empty filter; leave `filter` out to match all.")
        parts = [self.clause(key, value, path, depth) for key, value in node.items()]
        return parts[0] if len(parts) == 1 else AllOf(tuple(parts))

    def clause(self, key: Any, value: Any, path: str, depth: int) -> Filter:
        self.clauses += 1
        if self.clauses > MAX_CLAUSES:
            raise InvalidFilter(f"A filter has at most {MAX_CLAUSES} clauses.")
        here = f"{path}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise InvalidFilter(f"{here}: expected a non-empty list of filters.")
            parts = tuple(self.filter(item, f"{here}[{i}]", depth + 1)
                          for i, item in enumerate(value))  # fmt: skip
            return AllOf(parts) if key == "$and" else AnyOf(parts)
        if key.startswith("$"):
            raise InvalidFilter(
                f"{here}: unknown operator {key!r} here; fields may not start with '$', "
                "and only $and and $or combine filters."
            )
        _check_field(key, here)
        if isinstance(value, dict):
            if not value:
                raise InvalidFilter(f"{here}: an empty operator object.")
            tests = [_compare(key, op, operand, f"{here}.{op}") for op, operand in value.items()]
            return tests[0] if len(tests) == 1 else AllOf(tuple(tests))
        return _compare(key, "$eq", value, here)


def _compare(field: str, op: str, operand: Any, here: str) -> Compare:
    if op in ("$eq", "$ne"):
        return Compare(field, op, _scalar(operand, here))
    if op in ("$in", "$nin"):
        if not isinstance(operand, list) or not operand:
            raise InvalidFilter(f"{here}: expected a non-empty list of values.")
        if len(operand) > MAX_LIST:
            raise InvalidFilter(f"{here}: at most {MAX_LIST} values.")
        return Compare(field, op, tuple(_scalar(v, f"{here}[{i}]") for i, v in enumerate(operand)))
    if op in RANGE:
        if isinstance(operand, bool) or not isinstance(operand, int | float):
            raise InvalidFilter(f"{here}: expected a number, not {_kind(operand)}.")
        return Compare(field, op, _finite(operand, here))
    raise InvalidFilter(f"{here}: unknown operator {op!r}; use one of {', '.join(OPERATORS)}.")


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number" if isinstance(value, int | float) else "a value")


def _check_field(key: str, here: str) -> None:
    if not key or len(key) > MAX_FIELD:
        raise InvalidFilter(f"{here}: field names have 1 to {MAX_FIELD} characters.")
    if not clean(key):
        raise InvalidFilter(f"{here}: the field name has a NUL or an invalid character.")


def _scalar(value: Any, here: str) -> Scalar:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return _finite(value, here)
    if isinstance(value, str):
        if len(value) > MAX_STRING or not clean(value):
            raise InvalidFilter(f"{here}: strings have at most {MAX_STRING} valid characters.")
        return value
    raise InvalidFilter(f"{here}: expected a string, number or boolean, not {_kind(value)}.")


def _finite(value: int | float, here: str) -> int | float:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidFilter(f"{here}: numbers must be finite.")
    if isinstance(value, int) and abs(value) > 10**100:
        raise InvalidFilter(f"{here}: number too large.")
    return value


def _jsonb(value: Any) -> Any:
    return bindparam(None, value, type_=JSONB)


def parse_filter(node: Any) -> Filter:
    """The filter checked against the grammar (InvalidFilter naming the place if it is
    malformed); its `on(column)` is the SQL condition."""
    return _Parser().filter(node, "filter", 1)
