"""Prices and costs: the catalog of list prices (prices.json, a data file with the date it
was checked), the deployment's INFERENCE_PRICES, and the admins' runtime prices (the
`model_price` table: GET/PUT/DELETE /v1/providers/prices), one PriceBook per replica.

A model's price is the admins' if they set one, else INFERENCE_PRICES', else the
catalog's; a model in none of them has no price, and its calls no cost (null, never 0).
The replica that changes a price uses it at once; the others read the table again every
INFERENCE_CACHE_SECONDS.

Cost: input tokens at the input price, cached ones (read from the provider's prompt cache)
at the cached-input price and cache writes at the cache-write price (both the input price
when the catalog has none), completion tokens at the output price, reasoning ones at the
reasoning price where a model bills them apart (else they are output tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from importlib import resources
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from inference.providers.base import Usage

MILLION = Decimal(1_000_000)
NANO = Decimal("0.000000001")
# USD per one million tokens: more than any list price, little enough to sum exactly.
PerMillion = Annotated[float, Field(ge=0, le=100_000, allow_inf_nan=False)]
Source = Literal["admin", "settings", "catalog"]


class Price(BaseModel):
    """USD per one million tokens. `cached_input` and `cache_write` default to `input`,
    `reasoning` to `output`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: PerMillion
    output: PerMillion
    cached_input: PerMillion | None = None
    cache_write: PerMillion | None = None
    reasoning: PerMillion | None = None


class Catalog(BaseModel):
    """prices.json: list prices, the date they were checked and where."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checked: date
    source: str
    # Where a price comes from when not from the model's own provider (a Hugging Face
    # model's: the inference provider whose rate it is), by model.
    origin: dict[str, str] = {}
    models: dict[str, Price]


def load_catalog() -> Catalog:
    text = resources.files("inference").joinpath("prices.json").read_text(encoding="utf-8")
    return Catalog.model_validate(json.loads(text))


CATALOG = load_catalog()


def cost_usd(price: Price | None, usage: Usage | None) -> Decimal | None:
    """Exact decimal cost; None (not 0) when the model has no price or usage is unknown."""
    if price is None or usage is None:
        return None
    cached, written, reasoning = (
        usage.cached_tokens, usage.cache_write_tokens, usage.reasoning_tokens
    )  # fmt: skip
    plain_input = usage.prompt_tokens - cached - written
    cached_price = price.input if price.cached_input is None else price.cached_input
    write_price = price.input if price.cache_write is None else price.cache_write
    total = _d(price.input) * plain_input + _d(cached_price) * cached + _d(write_price) * written
    if price.reasoning is None:
        total += _d(price.output) * usage.completion_tokens
    else:
        total += _d(price.output) * (usage.completion_tokens - reasoning)
        total += _d(price.reasoning) * reasoning
    return (total / MILLION).quantize(NANO)


def _d(value: float) -> Decimal:
    return Decimal(str(value))


@dataclass
class PriceBook:
    """Every price this replica knows, by `provider/model`; `version` grows whenever the
    admins' prices change (what remembers prices compares it)."""

    catalog: Catalog
    settings: dict[str, Price]
    admin: dict[str, Price] = field(default_factory=dict)
    version: int = 0

    def get(self, model: str) -> Price | None:
        return self.admin.get(model) or self.settings.get(model) or self.catalog.models.get(model)

    def source(self, model: str) -> Source | None:
        if model in self.admin:
            return "admin"
        if model in self.settings:
            return "settings"
        return "catalog" if model in self.catalog.models else None

    def models(self) -> list[str]:
        return sorted({*self.catalog.models, *self.settings, *self.admin})

    def use_admin(self, prices: dict[str, Price]) -> None:
        """The admins' prices as the table holds them now."""
        if prices != self.admin:
            self.admin = prices
            self.version += 1
