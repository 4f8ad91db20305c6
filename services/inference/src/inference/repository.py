"""Every query of the inference service."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from inference.models import ModelAlias, ProviderCredential


async def add_credential(db: AsyncSession, *, credential: ProviderCredential) -> ProviderCredential:
    db.add(credential)
    await db.flush()
    await db.refresh(credential)
    return credential


async def get_credential(
    db: AsyncSession, *, credential_id: uuid.UUID
) -> ProviderCredential | None:
    return await db.get(ProviderCredential, credential_id)


async def visible_credentials(
    db: AsyncSession, *, owner_id: uuid.UUID | None
) -> Sequence[ProviderCredential]:
    """The caller's own credentials and the shared ones."""
    query = (
        select(ProviderCredential)
        .where(or_(col(ProviderCredential.owner_id) == owner_id, col(ProviderCredential.shared)))
        .order_by(col(ProviderCredential.created_at))
    )
    return (await db.execute(query)).scalars().all()


async def credential_for(
    db: AsyncSession, *, owner_id: uuid.UUID | None, provider: str
) -> ProviderCredential | None:
    """The caller's own credential for a provider, else a shared one (oldest first)."""
    query = (
        select(ProviderCredential)
        .where(
            col(ProviderCredential.provider) == provider,
            or_(col(ProviderCredential.owner_id) == owner_id, col(ProviderCredential.shared)),
        )
        .order_by(col(ProviderCredential.shared), col(ProviderCredential.created_at))
        .limit(1)
    )
    return (await db.execute(query)).scalar_one_or_none()


async def delete_credential(db: AsyncSession, *, credential_id: uuid.UUID) -> None:
    await db.execute(delete(ProviderCredential).where(col(ProviderCredential.id) == credential_id))


async def all_credentials(db: AsyncSession) -> Sequence[ProviderCredential]:
    return (await db.execute(select(ProviderCredential))).scalars().all()


async def replace_ciphertext(
    db: AsyncSession, *, credential_id: uuid.UUID, ciphertext: bytes, key_id: str, expected: bytes
) -> bool:
    """Compare-and-set, so a concurrent change is never overwritten by a rotation."""
    result = await db.execute(
        update(ProviderCredential)
        .where(
            col(ProviderCredential.id) == credential_id,
            col(ProviderCredential.key_ciphertext) == expected,
        )
        .values(key_ciphertext=ciphertext, key_id=key_id)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def get_alias(db: AsyncSession, *, alias: str) -> ModelAlias | None:
    return await db.get(ModelAlias, alias)


async def list_aliases(db: AsyncSession) -> Sequence[ModelAlias]:
    return (await db.execute(select(ModelAlias).order_by(col(ModelAlias.alias)))).scalars().all()


async def save_alias(db: AsyncSession, *, alias: ModelAlias) -> ModelAlias:
    """Create, or replace the targets of, an alias (one statement: safe under concurrency)."""
    statement = pg_insert(ModelAlias).values(
        alias=alias.alias, targets=alias.targets, created_by=alias.created_by
    )
    statement = statement.on_conflict_do_update(
        index_elements=[col(ModelAlias.alias)],
        set_={"targets": statement.excluded.targets, "created_by": statement.excluded.created_by},
    )
    await db.execute(statement)
    saved = await db.get(ModelAlias, alias.alias, populate_existing=True)
    assert saved is not None
    return saved


async def delete_alias(db: AsyncSession, *, alias: str) -> bool:
    result = await db.execute(delete(ModelAlias).where(col(ModelAlias.alias) == alias))
    return bool(result.rowcount)  # type: ignore[attr-defined]
