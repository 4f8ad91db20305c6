"""Password policy and argon2id hashing (off the event loop)."""

from __future__ import annotations

import asyncio
import ctypes
import gzip
from functools import lru_cache
from importlib import resources

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 12
MAX_LENGTH = 1024  # argon2 takes any length; this bounds the work one request can cause

# mallopt(3)'s M_MMAP_THRESHOLD, and the size from which blocks are mapped on their own and
# unmapped when freed.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    raw = resources.files("auth").joinpath("data/common-passwords.txt.gz").read_bytes()
    return frozenset(gzip.decompress(raw).decode().split())


def _is_decoration(char: str) -> bool:
    """Digits, punctuation, symbols, spaces, underscores: anything but a letter (the
    character class `[\\W\\d_]` of a regular expression, Unicode-wide)."""
    return not char.isalnum() or char.isdecimal()


def _core(password: str) -> str:
    """The password without the decoration at either end ("!!password2024" -> "password").

    Two linear scans. The pattern `^[\\W\\d_]*(.*?)[\\W\\d_]*$` did this before and
    backtracked cubically on crafted input: 2.5 s for 1,024 characters, on the event loop,
    before registration even looked at the email."""
    start, end = 0, len(password)
    while start < end and _is_decoration(password[start]):
        start += 1
    while end > start and _is_decoration(password[end - 1]):
        end -= 1
    return password[start:end]


def password_problem(password: str, *, email: str = "") -> str | None:
    """Why a new password is refused, or None when it is acceptable."""
    if len(password) < MIN_LENGTH:
        return f"Passwords need at least {MIN_LENGTH} characters."
    if len(password) > MAX_LENGTH:
        return f"Passwords may have at most {MAX_LENGTH} characters."
    lowered = password.lower()
    common = common_passwords()
    core = _core(lowered)
    if lowered in common or (core and core in common):
        return "This password is too common; choose another."
    if len(set(lowered)) < 4:
        return "This password repeats too few characters."
    local_part = email.partition("@")[0].lower()
    if len(local_part) >= 4 and local_part in lowered:
        return "Passwords may not contain the email address."
    return None


def give_back_large_blocks() -> bool:
    """Have the C library return every block of MMAP_THRESHOLD or more to the system when it
    is freed (glibc; True when it took the setting).

    Each hash allocates its memory cost (19 MiB) and frees it. glibc raises its mmap
    threshold to the size of the first large block freed, so from then on the block comes
    from the hashing thread's arena, and each arena keeps its 19 MiB: every worker thread
    that ever hashed (asyncio's default pool: the cores + 4, up to 32) held it for good, a
    burst of logins grew auth by up to that many times 19 MiB (`make soak` saw +20 MB in one
    step). A fixed threshold keeps the block mapped and unmapped each time: ~5 ms more CPU
    per hash, the memory given back."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the process's own C library
    return mallopt is not None and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


class Hasher:
    """argon2id with the configured cost; hashing and verifying run in worker threads, and
    their memory is given back after each (give_back_large_blocks)."""

    def __init__(self, *, time_cost: int, memory_kib: int, parallelism: int) -> None:
        give_back_large_blocks()
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism
        )
        # Verified against when the email is unknown, so both cases cost the same.
        self._dummy = self._hasher.hash("not a real password, only for timing")

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether `password` matches `stored`; without a stored hash, the same work is done
        against a dummy hash and the answer is always False."""
        valid = await asyncio.to_thread(self._verify, stored or self._dummy, password)
        return valid and stored is not None

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return bool(self._hasher.verify(stored, password))
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher.check_needs_rehash(stored)
