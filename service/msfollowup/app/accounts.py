"""Web users, API tokens and browser sessions: who may look at and change what.

Passwords are kept as argon2 hashes (argon2-cffi); API tokens and session ids are random secrets of
which only a SHA-256 is stored (a stolen database holds nothing that logs in). There is no default
account: the first admin comes from `msfollowup user add` or the one-time setup address the service
prints when it starts with no user.

Roles: viewer (reads), radiographer (+ cancels worklist items), clinician (+ edits monitoring plans),
qa (+ accepts results, chooses references), admin (everything, users). A kiosk is the scanner-room
screen of one station: API tokens only, each bound to a station (AE title or station name); it sees
the live panel of that station and nothing else (no patient lists, no reports).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Boolean, ForeignKey, Integer, String, delete, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from msfollowup.db import audit
from msfollowup.db import Base, UTCDateTime, utcnow

ROLES = ("viewer", "radiographer", "clinician", "qa", "admin", "kiosk")
KIOSK = "kiosk"
# What each permission needs; "admin" holds every permission.
PERMISSIONS: dict[str, frozenset[str]] = {
    "read": frozenset(ROLES) - {KIOSK},
    "worklist.cancel": frozenset({"radiographer", "clinician", "admin"}),
    "plan.edit": frozenset({"clinician", "admin"}),
    "live.view": frozenset({"radiographer", "qa", "clinician", "admin", KIOSK}),  # the scanner-room page
    "study.review": frozenset({"qa", "admin"}),
    "audit.read": frozenset({"qa", "admin"}),
    "users": frozenset({"admin"}),
}
SESSION_HOURS = 8
# A kiosk's browser session (from its token, entered once at the console) lasts a month; revoking the
# token ends it at once, because every request checks the token behind the session.
KIOSK_SESSION_HOURS = 30 * 24
MIN_PASSWORD = 12
_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_hasher = PasswordHasher()


class AccountError(ValueError):
    """A user or token request that cannot be done as asked (message names the problem)."""


class User(Base):
    __tablename__ = "web_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str | None] = mapped_column(String(256))  # None: API tokens only
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class ApiToken(Base):
    __tablename__ = "web_api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("web_users.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    station: Mapped[str | None] = mapped_column(String(64))  # kiosk tokens: the one station they show


class WebSession(Base):
    __tablename__ = "web_sessions"

    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("web_users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    token_id: Mapped[int | None] = mapped_column(  # kiosk sessions: their token
        ForeignKey("web_api_tokens.id", name="fk_web_sessions_token_id"))


@dataclass(frozen=True)
class Principal:
    """Who is asking: the user behind a session or token."""

    user_id: int
    name: str
    role: str
    csrf_token: str | None = None  # sessions only; token clients send no cookies and need none
    station: str | None = None  # kiosks: the station whose live panel they may see
    token_id: int | None = None  # kiosks: the token behind the principal

    def may(self, permission: str) -> bool:
        return self.role == "admin" or self.role in PERMISSIONS[permission]

    def sees_station(self, *names: object) -> bool:
        """May this principal see a panel of a scanner known by `names` (calling AE, station name)?"""
        if self.station is None:
            return self.role != KIOSK  # a kiosk without its station (not made by `token create`) sees none
        want = self.station.strip().upper()
        return any(isinstance(n, str) and n.strip().upper() == want for n in names)


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise AccountError(f"user name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-'")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"role {role!r}: choose one of {', '.join(ROLES)}")
    return role


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"password: at least {MIN_PASSWORD} characters")
    return password


def has_users(session: Session) -> bool:
    return bool(session.scalar(select(func.count()).select_from(User)))


def add_user(session: Session, name: str, role: str, password: str | None, author: str) -> User:
    """Create a user (or replace the password and role of an existing one); audited."""
    check_name(name)
    check_role(role)
    if password is not None:
        check_password(password)
        if role == KIOSK:
            raise AccountError("a kiosk logs in with its station token, not a password: msfollowup token create "
                               "NAME --role kiosk --station STATION")
    row = session.scalar(select(User).where(User.name == name))
    digest = _hasher.hash(password) if password is not None else None
    if row is None:
        row = User(name=name, role=role, password_hash=digest, active=True, created_at=utcnow())
        session.add(row)
    else:
        row.role, row.active = role, True
        if digest is not None:
            row.password_hash = digest
    session.flush()
    audit.record(session, audit.USER_CHANGE, actor_user=author, detail={"user": name, "role": role})
    return row


def authenticate(session: Session, name: str, password: str) -> Principal | None:
    row = session.scalar(select(User).where(User.name == name, User.active.is_(True)))
    if row is None or row.password_hash is None:
        _hasher.hash("x" * MIN_PASSWORD)  # about the same time as a real check: no user-name oracle
        return None
    try:
        _hasher.verify(row.password_hash, password)
    except (VerificationError, InvalidHashError):
        return None
    if _hasher.check_needs_rehash(row.password_hash):
        row.password_hash = _hasher.hash(password)
    return Principal(row.id, row.name, row.role)


def check_station(role: str, station: str | None) -> str | None:
    """A kiosk token needs its station (AE title or station name); other roles see every station."""
    station = (station or "").strip() or None
    if role == KIOSK and station is None:
        raise AccountError("a kiosk token needs --station (the scanner's AE title or station name)")
    if role != KIOSK and station is not None:
        raise AccountError(f"--station is for kiosk tokens; role {role!r} sees every station")
    if station is not None and (len(station) > 64 or not station.isprintable()):
        raise AccountError("station: up to 64 printable characters")
    return station


def create_token(session: Session, name: str, role: str, author: str, station: str | None = None) -> str:
    """A new API token for `name` (a token-only user is created when missing, with `role`); kiosk
    tokens are bound to `station`."""
    check_name(name)
    check_role(role)
    station = check_station(role, station)
    row = session.scalar(select(User).where(User.name == name))
    if row is None:
        row = add_user(session, name, role, None, author)
    elif row.role != role:
        raise AccountError(f"user {name!r} has role {row.role!r}, not {role!r}")
    secret = "msf_" + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=row.id, token_sha256=_sha(secret), created_at=utcnow(), station=station))
    session.flush()
    detail: dict[str, object] = {"user": name, "change": "created"}
    if station is not None:
        detail["station"] = station
    audit.record(session, audit.TOKEN_CHANGE, actor_user=author, detail=detail)
    return secret


def revoke_tokens(session: Session, name: str, author: str) -> int:
    user_id = session.scalar(select(User.id).where(User.name == name))
    if user_id is None:
        raise AccountError(f"no user {name!r}")
    live = list(session.scalars(select(ApiToken).where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))))
    for tok in live:
        tok.revoked_at = utcnow()
    n = len(live)
    audit.record(session, audit.TOKEN_CHANGE, actor_user=author, detail={"user": name, "change": "revoked", "count": n})
    return int(n or 0)


def token_principal(session: Session, secret: str) -> Principal | None:
    row = session.execute(
        select(User.id, User.name, User.role, ApiToken.station, ApiToken.id).join(ApiToken, ApiToken.user_id == User.id)
        .where(ApiToken.token_sha256 == _sha(secret), ApiToken.revoked_at.is_(None), User.active.is_(True))
    ).first()
    return Principal(row[0], row[1], row[2], None, row[3], row[4]) if row else None


def session_hours(principal: Principal) -> int:
    return KIOSK_SESSION_HOURS if principal.role == KIOSK else SESSION_HOURS


def start_session(session: Session, principal: Principal, now: dt.datetime | None = None) -> tuple[str, str]:
    """(cookie value, CSRF token) of a new browser session; expired sessions are dropped on the way.
    A kiosk's session remembers its token, so revoking the token ends the session too."""
    now = now or utcnow()
    session.execute(delete(WebSession).where(WebSession.expires_at < now))
    cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session.add(WebSession(id_sha256=_sha(cookie), user_id=principal.user_id, csrf_token=csrf,
                           expires_at=now + dt.timedelta(hours=session_hours(principal)),
                           token_id=principal.token_id))
    return cookie, csrf


def session_principal(session: Session, cookie: str) -> Principal | None:
    row = session.execute(
        select(User.id, User.name, User.role, WebSession.csrf_token, ApiToken.station, ApiToken.id, ApiToken.revoked_at,
               WebSession.token_id)
        .join(WebSession, WebSession.user_id == User.id)
        .outerjoin(ApiToken, ApiToken.id == WebSession.token_id)
        .where(WebSession.id_sha256 == _sha(cookie), WebSession.expires_at > utcnow(), User.active.is_(True))
    ).first()
    if row is None:
        return None
    if row[7] is not None and (row[5] is None or row[6] is not None):
        return None  # a kiosk session whose token was revoked (or deleted)
    return Principal(row[0], row[1], row[2], row[3], row[4], row[5])


def end_session(session: Session, cookie: str) -> None:
    session.execute(delete(WebSession).where(WebSession.id_sha256 == _sha(cookie)))


def list_users(session: Session) -> list[dict[str, object]]:
    return [{"name": u.name, "role": u.role, "active": u.active, "password": u.password_hash is not None}
            for u in session.scalars(select(User).order_by(User.name))]
