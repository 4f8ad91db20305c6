"""Dependencies of the gateway's routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from common.identity import Identity


async def caller_identity(request: Request) -> Identity:
    """Who is calling. Until sessions and API keys exist, every caller is anonymous;
    the services still only see what the gateway signed."""
    return Identity(sub="anonymous", kind="anonymous", iss="gateway")


CallerIdentity = Annotated[Identity, Depends(caller_identity)]
