"""Annotator accounts: passwords, login sessions and API tokens.

Passwords are hashed with scrypt and a per-user salt; session tokens are random and stored only as
their SHA-256, so a leaked database yields neither a password nor a usable token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from .errors import ConflictError, NotFoundError, StoreError
from .schema import Annotator, Assignment, SessionToken, _now
from .views import AnnotatorInfo

# "judge": an AI labeler (`rlhf label judge`) that answers the queue through the store, never through the
# web UI: it cannot log in or hold a session (authenticate / create_session refuse it).
ROLES = ("admin", "annotator", "judge")
_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
MIN_PASSWORD = 8  # for passwords people choose (change_password); invited ones are 16 random characters


def generated_password() -> str:
    """A password for an invitation or an admin's reset: shown once, replaced at first login."""
    return secrets.token_urlsafe(12)


def _hash_password(password: str, salt: bytes) -> str:
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, maxmem=64 * 2 ** 20, **_SCRYPT)
    return f"scrypt:{_SCRYPT['n']}:{_SCRYPT['r']}:{_SCRYPT['p']}${digest.hex()}"


def _check_password(password: str, stored: str, salt_hex: str) -> bool:
    params, _, digest_hex = stored.partition("$")
    _, n, r, p = params.split(":")
    digest = hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(salt_hex), dklen=32,
                            maxmem=64 * 2 ** 20, n=int(n), r=int(r), p=int(p))
    return hmac.compare_digest(digest.hex(), digest_hex)


def _token_hash(token: str) -> str:
    # A 256-bit random token needs no slow hash: brute force is hopeless either way.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _annotator_info(a: Annotator) -> AnnotatorInfo:
    return AnnotatorInfo(id=a.id, name=a.name, role=a.role, active=bool(a.active),
                         must_change_password=bool(a.must_change_password), spec=a.spec)


class AccountsMixin:
    """The account methods of :class:`~rlhfkit.feedback.store.FeedbackStore`."""

    _session: sessionmaker[Session]  # set by FeedbackStore.__init__
    session_life: timedelta

    def add_annotator(self, name: str, password: str, role: str = "annotator", *,
                      must_change_password: bool = False, spec: dict | None = None) -> AnnotatorInfo:
        """A new account. ``must_change_password``: for invitations, whose password someone else saw.
        ``spec``: a judge's spec (JSON), only with role "judge"."""
        if not isinstance(name, str) or not name.strip():
            raise StoreError("an annotator needs a non-blank name", field="name")
        if role not in ROLES:
            raise StoreError(f"role must be one of {ROLES}, got {role!r}", field="role")
        if not isinstance(password, str) or not password:
            raise StoreError("a password is required", field="password")
        if spec is not None and (role != "judge" or not isinstance(spec, dict)):
            raise StoreError("a spec (a dict) is only for annotators with role 'judge'", field="spec")
        salt = secrets.token_bytes(16)
        digest = _hash_password(password, salt)  # outside the transaction: scrypt is slow on purpose
        with self._session.begin() as s:
            if s.scalar(select(Annotator.id).where(Annotator.name == name)) is not None:
                raise ConflictError(f"annotator '{name}' already exists", field="name")
            a = Annotator(name=name, role=role, password_hash=digest, salt=salt.hex(), active=True,
                          must_change_password=bool(must_change_password), spec=spec)
            s.add(a)
            s.flush()
            return _annotator_info(a)

    def get_annotator(self, name: str) -> AnnotatorInfo | None:
        with self._session.begin() as s:
            a = s.scalar(select(Annotator).where(Annotator.name == name))
            return _annotator_info(a) if a else None

    def list_annotators(self) -> list[AnnotatorInfo]:
        with self._session.begin() as s:
            return [_annotator_info(a) for a in s.scalars(select(Annotator).order_by(Annotator.id))]

    def get_annotator_by_id(self, annotator_id: int) -> AnnotatorInfo:
        with self._session.begin() as s:
            return _annotator_info(_annotator(s, annotator_id))

    def authenticate(self, name: str, password: str, *,
                     include_inactive: bool = False) -> AnnotatorInfo | None:
        """The account if the password is right and it is active. ``include_inactive``: a deactivated
        account with the right password is returned too (``active=False``), so the login page can say
        why it is refused; callers that sign people in must check ``active`` then."""
        with self._session.begin() as s:
            a = s.scalar(select(Annotator).where(Annotator.name == name))
            info = _annotator_info(a) if a else None
            stored, salt = (a.password_hash, a.salt) if a else (None, None)
        if stored is None or info.role == "judge":
            # Hash anyway so an unknown name takes as long as a wrong password (no user enumeration).
            # A judge is refused like an unknown name: it labels through the store, never the web UI.
            _hash_password(password or "", b"\0" * 16)
            return None
        if not _check_password(password or "", stored, salt):
            return None
        return info if info.active or include_inactive else None

    def change_password(self, annotator_id: int, current: str, new: str, *,
                        keep_session: str | None = None) -> None:
        """Replace an annotator's password after checking the current one (an invited annotator
        replaces the one the admin saw, which clears ``must_change_password``). Every other session
        and API token of theirs ends, so a leaked old password or token stops working;
        ``keep_session`` (the caller's) survives."""
        if not isinstance(new, str) or len(new) < MIN_PASSWORD or len(new) > 1000:
            raise StoreError(f"the new password needs {MIN_PASSWORD} to 1000 characters", field="new")
        with self._session.begin() as s:
            a = s.get(Annotator, annotator_id)
            if a is None:
                raise NotFoundError(f"unknown annotator id {annotator_id}", field="annotator_id")
            stored, salt_hex = a.password_hash, a.salt
        if not _check_password(current or "", stored, salt_hex):
            raise StoreError("the current password is wrong", field="current")
        if hmac.compare_digest(new.encode("utf-8"), (current or "").encode("utf-8")):
            raise StoreError("the new password must differ from the current one", field="new")
        salt = secrets.token_bytes(16)
        digest = _hash_password(new, salt)
        with self._session.begin() as s:
            a = s.get(Annotator, annotator_id)
            a.password_hash, a.salt, a.must_change_password = digest, salt.hex(), False
            q = delete(SessionToken).where(SessionToken.annotator_id == annotator_id)
            if keep_session:
                q = q.where(SessionToken.token_hash != _token_hash(keep_session))
            s.execute(q)

    def create_session(self, annotator_id: int) -> str:
        token = secrets.token_urlsafe(32)
        with self._session.begin() as s:
            a = s.get(Annotator, annotator_id)
            if a is None:
                raise NotFoundError(f"unknown annotator id {annotator_id}", field="annotator_id")
            if a.role == "judge":
                raise StoreError(f"'{a.name}' is an AI judge; judges never log in", field="annotator_id")
            now = _now()
            s.add(SessionToken(annotator_id=annotator_id, token_hash=_token_hash(token), created_at=now,
                               expires_at=now + self.session_life))
        return token

    def annotator_for_session(self, token: str) -> AnnotatorInfo | None:
        if not token:
            return None
        with self._session.begin() as s:
            st = s.scalar(select(SessionToken).where(SessionToken.token_hash == _token_hash(token)))
            if st is None or st.expires_at <= _now():
                return None
            a = s.get(Annotator, st.annotator_id)
            # Deactivating ends every session anyway; this also covers a row switched off by hand.
            return _annotator_info(a) if a.active and a.role != "judge" else None

    def end_session(self, token: str) -> None:
        """Log out: the token stops working."""
        with self._session.begin() as s:
            s.execute(delete(SessionToken).where(SessionToken.token_hash == _token_hash(token)))

    # ------------------------------------------------------------------ what admins do to accounts

    def set_active(self, annotator_id: int, active: bool) -> AnnotatorInfo:
        """Deactivate (``False``) or reactivate an account. Deactivating ends all its sessions and API
        tokens and frees the task slots it had reserved; its judgements stay (export can still drop
        them by gold accuracy)."""
        with self._session.begin() as s:
            a = _annotator(s, annotator_id)
            a.active = bool(active)
            if not active:
                s.execute(delete(SessionToken).where(SessionToken.annotator_id == a.id))
                s.execute(delete(Assignment).where(Assignment.annotator_id == a.id))
            return _annotator_info(a)

    def reset_password(self, annotator_id: int) -> str:
        """A new generated password for the account (returned once, stored hashed); it must be replaced
        at the next login, and every session of the account ends."""
        password = generated_password()
        salt = secrets.token_bytes(16)
        digest = _hash_password(password, salt)
        with self._session.begin() as s:
            a = _annotator(s, annotator_id)
            a.password_hash, a.salt, a.must_change_password = digest, salt.hex(), True
            s.execute(delete(SessionToken).where(SessionToken.annotator_id == a.id))
        return password

    def end_all_sessions(self, annotator_id: int) -> int:
        """Log the account out everywhere (browser sessions and API tokens); returns how many ended."""
        with self._session.begin() as s:
            _annotator(s, annotator_id)
            return s.execute(delete(SessionToken).where(SessionToken.annotator_id == annotator_id)).rowcount

    def session_count(self, annotator_id: int) -> int:
        """Live sessions and API tokens of the account."""
        with self._session.begin() as s:
            return len(s.scalars(select(SessionToken.id).where(SessionToken.annotator_id == annotator_id,
                                                               SessionToken.expires_at > _now())).all())


def _annotator(s: Session, annotator_id: int) -> Annotator:
    a = s.get(Annotator, annotator_id) if isinstance(annotator_id, int) else None
    if a is None:
        raise NotFoundError(f"unknown annotator id {annotator_id!r}", field="annotator_id")
    return a
