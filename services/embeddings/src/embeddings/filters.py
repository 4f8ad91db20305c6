"""Metadata filters in the Mongo-style syntax of Pinecone and Chroma, compiled to SQL.

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

The SQL is built from this fixed grammar with SQLAlchemy expressions only: field names and
values are always bound parameters, never part of the SQL text.
"""

from __future__ import annotations

import math
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


class _Compiler:
    def __init__(self, column: Any) -> None:
        self.column = column
        self.clauses = 0

    def filter(self, node: Any, path: str, depth: int) -> ColumnElement[bool]:
        if not isinstance(node, dict):
            raise InvalidFilter(f"{path}: a filter is an object, not {_kind(node)}.")
        if depth > MAX_DEPTH:
            raise InvalidFilter(f"{path}: filters nest at most {MAX_DEPTH} levels deep.")
        if not node:
            raise InvalidFilter(f"{path}: an empty filter; leave `filter` out to match all.")
        parts = [self.clause(key, value, path, depth) for key, value in node.items()]
        return parts[0] if len(parts) == 1 else and_(*parts)

    def clause(self, key: Any, value: Any, path: str, depth: int) -> ColumnElement[bool]:
        self.clauses += 1
        if self.clauses > MAX_CLAUSES:
            raise InvalidFilter(f"A filter has at most {MAX_CLAUSES} clauses.")
        here = f"{path}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise InvalidFilter(f"{here}: expected a non-empty list of filters.")
            parts = [self.filter(item, f"{here}[{i}]", depth + 1) for i, item in enumerate(value)]
            return and_(*parts) if key == "$and" else or_(*parts)
        if key.startswith("$"):
            raise InvalidFilter(
                f"{here}: unknown operator {key!r} here; fields may not start with '$', "
                "and only $and and $or combine filters."
            )
        _check_field(key, here)
        if isinstance(value, dict):
            if not value:
                raise InvalidFilter(f"{here}: an empty operator object.")
            parts = [
                self.operator(key, op, operand, f"{here}.{op}") for op, operand in value.items()
            ]
            return parts[0] if len(parts) == 1 else and_(*parts)
        return self.operator(key, "$eq", value, here)

    def operator(self, field: str, op: str, operand: Any, here: str) -> ColumnElement[bool]:
        value = self.column[bindparam(None, field)]
        if op in ("$eq", "$ne"):
            bound = _jsonb(_scalar(operand, here))
            same: ColumnElement[bool] = value == bound
            return same if op == "$eq" else value.is_distinct_from(bound)
        if op in ("$in", "$nin"):
            if not isinstance(operand, list) or not operand:
                raise InvalidFilter(f"{here}: expected a non-empty list of values.")
            if len(operand) > MAX_LIST:
                raise InvalidFilter(f"{here}: at most {MAX_LIST} values.")
            members = value.in_([_jsonb(_scalar(v, f"{here}[{i}]")) for i, v in enumerate(operand)])
            return members if op == "$in" else or_(value.is_(None), not_(members))
        if op in RANGE:
            if isinstance(operand, bool) or not isinstance(operand, int | float):
                raise InvalidFilter(f"{here}: expected a number, not {_kind(operand)}.")
            compare = getattr(value, RANGE[op])(_jsonb(_finite(operand, here)))
            return and_(func.jsonb_typeof(value) == "number", compare)
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


def _scalar(value: Any, here: str) -> str | int | float | bool:
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


def _jsonb(value: str | int | float | bool) -> Any:
    return bindparam(None, value, type_=JSONB)


def compile_filter(node: Any, column: Any) -> ColumnElement[bool]:
    """The SQL condition for a filter on a JSONB column (InvalidFilter if it is malformed)."""
    return _Compiler(column).filter(node, "filter", 1)
