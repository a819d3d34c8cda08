"""Passwords and tokens. Passwords are argon2id-hashed (argon2-cffi defaults); session and API tokens are
random 256-bit values given to the client once and stored only as SHA-256 hashes, so a database leak does not
hand out live sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from functools import cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "ROLES",
    "check_password_policy",
    "constant_time_equal",
    "hash_password",
    "hash_token",
    "needs_rehash",
    "new_token",
    "verify_password",
]

#: nurse: works the worklist of their teams; coordinator: the same plus the funnel summary of their teams;
#: admin: every team, the do-not-contact register and users.
ROLES = ("nurse", "coordinator", "admin")

#: Passwords shorter than this are refused (NCSC and NIST SP 800-63B both favour length over complexity rules).
MIN_PASSWORD_LENGTH = 12
_COMMON_FILE = Path(__file__).with_name("common_passwords.txt")

_hasher = PasswordHasher()


@cache
def _dummy_hash() -> str:
    """Verified against when a username does not exist, so a login takes as long either way (made on first use:
    an argon2 hash costs about 0.3 s, which every process importing this module paid)."""
    return _hasher.hash("not-a-real-password")


@cache
def _common_passwords() -> frozenset[str]:
    lines = _COMMON_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(x.strip().lower() for x in lines if x.strip() and not x.startswith("#"))


def check_password_policy(password: str, username: str = "") -> None:
    """Refuse a weak password, saying why in words: shorter than :data:`MIN_PASSWORD_LENGTH`, on the shipped list
    of common passwords (``common_passwords.txt``), one character repeated, or the username itself.

    :raises ValueError: the reason."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password is too short: use at least {MIN_PASSWORD_LENGTH} characters (a few words)")
    lowered = password.lower()
    if lowered in _common_passwords() or len(set(lowered)) == 1:
        raise ValueError("that password is one of the most common ones; choose another (a few unrelated words)")
    if username and lowered == username.lower():
        raise ValueError("the password must not be the username")


def hash_password(password: str) -> str:
    """argon2id hash of ``password`` (with its own salt and parameters encoded in the string)."""
    if not password:
        raise ValueError("password must not be empty")
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches ``password_hash``. ``None`` (unknown user) is checked against a dummy hash
    so the timing does not reveal whether the user exists; it always returns False."""
    try:
        ok = _hasher.verify(password_hash or _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return False
    return ok and password_hash is not None


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def new_token(nbytes: int = 32) -> str:
    """A URL-safe random token (for sessions, CSRF, API tokens)."""
    return secrets.token_urlsafe(nbytes)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def constant_time_equal(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode(), b.encode())
