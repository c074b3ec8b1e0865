"""Sign-in, users and roles."""
from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import bindparam, delete, exists, func, select, update
from sqlalchemy.orm import Session, joinedload, lazyload, object_session

from portal.accounts.models import Role, RolePermission, SignIn, User, user_location, user_role
from portal.accounts.permissions import DEFAULT_ROLES, PERMISSIONS
from portal.audit.services import record
from portal.clock import now
from portal.errors import DomainError
from portal.locations.models import Location
from portal.locations.services import Scope

MIN_PASSWORD = 10


def authenticate(session: Session, email: str, password: str, *, max_failures: int,
                 lock_minutes: int) -> User:
    """Return the user, or raise with one message for every kind of failure, a locked
    account's included (a message of its own told anyone which emails have an account);
    lock the account for a while after repeated failures."""
    user = session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))
    refused = DomainError(f"Wrong email or password. After {max_failures} wrong tries an account "
                          f"is locked for {lock_minutes} minutes.")
    if user is None:
        # Spend the same time as a real check so response times do not reveal accounts.
        User(password_hash="scrypt:32768:8:1$x$00").check_password(password)
        raise refused
    if _locked(user):
        # Checked all the same: answering a locked account at once told anyone, by the time
        # it took, that the email has an account (lock it with five tries, time the sixth).
        user.check_password(password)
        raise refused
    if not user.check_password(password):
        _count_wrong_password(session, user, max_failures=max_failures, lock_minutes=lock_minutes)
        raise refused
    if not user.active:
        raise DomainError("This account is disabled. Ask an administrator.")
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now()
    return user


# The signed-in user on every request, in one statement built once: the user with their
# locations, and the permissions of their roles as one string (loading roles and grants
# as objects, a row per grant, cost more than the rest of a search request).
_granted = (select(func.aggregate_strings(RolePermission.permission, ","))
            .join(user_role, user_role.c.role_id == RolePermission.role_id)
            .where(user_role.c.user_id == User.id).scalar_subquery())
_live = exists().where(SignIn.user_id == User.id, SignIn.token_hash == bindparam("sign_in"),
                       SignIn.ended_at.is_(None), SignIn.started_at >= bindparam("since"))
_SIGNED_IN_USER = (select(User, _granted, _live).where(User.id == bindparam("user_id"))
                   .options(joinedload(User.locations), lazyload(User.roles)))

# A sign-in lasts at most this long, however busy (each request renews only the idle limit).
SIGN_IN_DAYS = 7


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_sign_in(session: Session, user: User) -> str:
    """Record a new signed-in session of ``user`` and return its token for the cookie. The
    sign-ins past their last day go at the same time."""
    session.execute(delete(SignIn).where(SignIn.started_at < now() - timedelta(days=SIGN_IN_DAYS)))
    token = secrets.token_urlsafe(32)
    session.add(SignIn(user_id=user.id, token_hash=_token_hash(token), started_at=now()))
    record(session, action="sign_in", entity_type="user", entity_id=user.id,
           summary=f"{user.email} signed in", actor_id=user.id)
    return token


def end_sign_in(session: Session, token: str | None) -> None:
    """Signing out: the session with this token signs nobody in again, whoever holds a copy."""
    if not token:
        return
    ended = session.scalars(update(SignIn).where(
        SignIn.token_hash == _token_hash(token), SignIn.ended_at.is_(None))
        .values(ended_at=now()).returning(SignIn.user_id)).all()
    for user_id in ended:
        record(session, action="sign_out", entity_type="user", entity_id=user_id,
               summary="Signed out", actor_id=user_id)


def load_user(session: Session, token: str, sign_in: str | None) -> User | None:
    """The user of a session: its cookie names the user and their session version
    (``token``) and the sign-in (``sign_in``), which must not have ended."""
    try:
        user_id, version = (int(part) for part in token.split(":"))
    except ValueError:
        return None
    if not sign_in:
        return None
    row = session.execute(_SIGNED_IN_USER, {
        "user_id": user_id, "sign_in": _token_hash(sign_in),
        "since": now() - timedelta(days=SIGN_IN_DAYS)}).unique().first()
    if row is None:
        return None
    user, granted, live = row
    if user.session_version != version or not user.active or not live:
        return None
    user.granted_permissions = frozenset(granted.split(",")) if granted else frozenset()
    return user


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise DomainError(f"Use at least {MIN_PASSWORD} characters.", field="password")


def _locked(user: User) -> bool:
    return bool(user.locked_until and user.locked_until > now())


def _count_wrong_password(session: Session, user: User, *, max_failures: int, lock_minutes: int) -> bool:
    """One more wrong password; the last one allowed locks the account for a while.
    Returns whether it did."""
    user.failed_logins += 1
    if user.failed_logins < max_failures:
        return False
    user.locked_until = now() + timedelta(minutes=lock_minutes)
    user.failed_logins = 0
    record(session, action="lock", entity_type="user", entity_id=user.id,
           summary=f"{user.email} locked after {max_failures} wrong passwords")
    return True


def change_password(session: Session, user: User, current: str, new: str, *, max_failures: int,
                    lock_minutes: int) -> None:
    """Wrong current passwords count as failed sign-ins do: a session left open on a shared
    tablet must not let anyone try passwords without end. The try that locks the account
    also ends every session of it (raised without a field: the caller signs the user out)."""
    if _locked(user):
        user.session_version += 1
        raise DomainError("This account is locked after too many wrong passwords: sign in again later.")
    if not user.check_password(current):
        if _count_wrong_password(session, user, max_failures=max_failures, lock_minutes=lock_minutes):
            user.session_version += 1
            raise DomainError(f"Too many wrong passwords: you are signed out, and the account is "
                              f"locked for {lock_minutes} minutes.")
        raise DomainError("The current password is not right.", field="current")
    check_password_strength(new)
    user.set_password(new)
    _record_password_change(session, user, f"{user.email} changed their own password")


def _record_password_change(session: Session, user: User, summary: str) -> None:
    """The flush hook never sees the hash (excluded), so a password change is logged
    explicitly: the entry's actor is who changed it, its entity whose it is."""
    record(session, action="password", entity_type="user", entity_id=user.id, summary=summary)


def ensure_roles(session: Session) -> dict[str, Role]:
    """Create the built-in roles that are missing; never overwrite an admin's edits."""
    roles = {r.name: r for r in session.scalars(select(Role))}
    for name, (label, permissions) in DEFAULT_ROLES.items():
        if name not in roles:
            role = Role(name=name, label=label, grants=[RolePermission(permission=p) for p in permissions])
            session.add(role)
            roles[name] = role
    admin = roles["admin"]
    # New permissions added in code reach the admin role on the next start.
    for permission in set(PERMISSIONS) - admin.permissions:
        admin.grants.append(RolePermission(permission=permission))
    session.flush()
    return roles


def set_role_permissions(role: Role, permissions: list[str], *,
                         actor_permissions: frozenset[str] | None = None) -> None:
    """Give a role these permissions. ``actor_permissions``, those of the user doing it, must
    hold every permission given or taken away (None only where nobody is: set-up, tests):
    editing a role, one's own included, must not be a way to more power than one has."""
    unknown = set(permissions) - set(PERMISSIONS)
    if unknown:
        raise DomainError(f"Unknown permission(s): {', '.join(sorted(unknown))}.")
    if actor_permissions is not None:
        beyond = (set(permissions) ^ role.permissions) - actor_permissions
        if beyond:
            raise DomainError("You can only give or take away permissions you have yourself: "
                              + ", ".join(sorted(beyond)) + ".")
    if role.name == "admin" and set(PERMISSIONS) - set(permissions):
        # A permission taken away could not be given back from the portal (only who holds it
        # may give it), and ``ensure_roles`` gives it back at the next start anyway.
        raise DomainError("The administrator role keeps every permission, so that someone can "
                          "always fix roles, users and locations: make a role of your own instead.")
    session = object_session(role)
    if ("user.manage" in role.permissions and "user.manage" not in permissions and session is not None
            and not _user_managers_left(session, without_role=role.id)):
        raise DomainError(f"Nobody active would manage users from all locations without the role "
                          f"{role.label}: give another role's user that permission first.")
    keep = [g for g in role.grants if g.permission in permissions]
    have = {g.permission for g in keep}
    role.grants = keep + [RolePermission(permission=p) for p in sorted(set(permissions) - have)]


def resolve_locations(session: Session, codes: list[str], scope: Scope) -> list[Location]:
    """The locations of these codes, each once (a code typed twice is no error)."""
    codes = list(dict.fromkeys(c.strip() for c in codes if c.strip()))
    if not codes:
        return []
    found = {loc.code: loc for loc in session.scalars(select(Location).where(Location.code.in_(codes)))}
    missing = [c for c in codes if c not in found]
    if missing:
        raise DomainError(f"Unknown location code(s): {', '.join(missing)}.", field="locations")
    outside = [c for c in codes if not scope.allows(found[c])]
    if outside:
        raise DomainError(f"Outside your area: {', '.join(outside)}.", field="locations")
    return [found[c] for c in codes]


def check_role_change(before: list[Role], after: list[Role], *, actor_permissions: frozenset[str]) -> None:
    """Refuse to grant a role with a permission the acting user lacks: user management must
    not be a way to more power than one has. (Taking such a role away is refused with the
    user who holds it: ``check_may_manage``.)"""
    added = ", ".join(sorted(r.label for r in set(after) - set(before)
                             if not r.permissions <= actor_permissions))
    if added:
        raise DomainError(f"You can only grant roles whose permissions you have yourself: {added}.",
                          field="roles")


def save_user(session: Session, user: User | None, *, email: str, name: str, password: str,
              roles: list[Role], locations: list[Location], all_locations: bool,
              scope: Scope, actor_permissions: frozenset[str] | None = None,
              actor_id: int | None = None) -> User:
    """Create or change a user. ``actor_permissions`` are those of the user doing it (and
    ``actor_id`` who it is); None only where nobody is (first admin, demo data, test fixtures)."""
    email = email.strip().lower()
    if all_locations and not scope.everything:
        raise DomainError("Only a user who sees all locations may grant all locations.",
                          field="all_locations")
    if user is not None and not visible_user(user, scope):
        raise DomainError("This user is outside your area.")
    if actor_permissions is not None:
        if user is not None:
            check_may_manage(user, actor_permissions=actor_permissions)
        check_role_change(list(user.roles) if user else [], roles, actor_permissions=actor_permissions)
    if user is not None and user.id == actor_id and password:
        raise DomainError("Change your own password on your account page, which asks for the "
                          "current one.", field="password")
    if user is not None and _manages_users_everywhere(user) and not (
            _manages_users(roles) and all_locations):
        _check_someone_else_manages_users(session, user)
    clash = session.scalar(select(User.id).where(func.lower(User.email) == email,
                                                 User.id != (user.id if user else -1)))
    if clash:
        raise DomainError("Another user already has this email.", field="email")
    if user is None:
        check_password_strength(password)
        user = User(email=email, name=name.strip(), active=True, session_version=0)
        user.set_password(password)
        session.add(user)
    else:
        user.email, user.name = email, name.strip()
        if password:
            check_password_strength(password)
            user.set_password(password)
            # The administrator's reset is how a user locked out by wrong tries gets back in.
            user.failed_logins, user.locked_until = 0, None
            _record_password_change(session, user, f"Password of {user.email} reset by an administrator")
    user.roles = roles
    user.locations = locations
    user.all_locations = all_locations
    session.flush()
    return user


def _manages_users(roles) -> bool:
    return any("user.manage" in role.permissions for role in roles)


def _manages_users_everywhere(user: User) -> bool:
    return user.active and user.all_locations and _manages_users(user.roles)


def _user_managers_left(session: Session, *, without_user: int = -1, without_role: int = -1) -> int:
    """Active users who see all locations and would still manage users without this user,
    or without this role's grant of user.manage. The portal must keep one: only they may
    change roles or grant all locations, and a user manager limited to a district cannot
    fix that (nor can ``flask setup``, which finds an administrator and stops)."""
    return session.scalar(
        select(func.count(func.distinct(User.id))).join(user_role, user_role.c.user_id == User.id)
        .join(RolePermission, RolePermission.role_id == user_role.c.role_id)
        .where(RolePermission.permission == "user.manage", User.active.is_(True),
               User.all_locations.is_(True), User.id != without_user,
               user_role.c.role_id != without_role))


def _check_someone_else_manages_users(session: Session, user: User) -> None:
    if not _user_managers_left(session, without_user=user.id):
        raise DomainError(f"{user.name or user.email} is the only active user who manages users and "
                          "sees all locations: give someone else both first.", field="roles")


def check_may_manage(user: User, *, actor_permissions: frozenset[str]) -> None:
    """Refuse to change a user who may do more than the acting user: a new password or email
    would let the actor sign in as them, disabling them would strip them of it."""
    if not user.permissions <= actor_permissions:
        raise DomainError("You can only change users whose permissions you have yourself.")


def set_active(user: User, active: bool, *, actor: User) -> None:
    if user.id == actor.id and not active:
        raise DomainError("You cannot disable your own account: another administrator can.")
    check_may_manage(user, actor_permissions=actor.permissions)
    user.active = active
    if not active:
        user.session_version += 1  # signs the user out everywhere


def visible_user(user: User, scope: Scope) -> bool:
    if scope.everything:
        return True
    if user.all_locations or not user.locations:
        return False
    return all(scope.allows(loc) for loc in user.locations)


def list_users(session: Session, *, scope: Scope, text: str = "") -> list[User]:
    query = select(User).order_by(User.name)
    if text:
        like = f"%{text.strip()}%"
        query = query.where(User.name.ilike(like) | User.email.ilike(like))
    if not scope.everything:
        inside = select(user_location.c.user_id).join(Location).where(scope.location_clause())
        query = query.where(User.all_locations.is_(False), User.id.in_(inside))
    return [u for u in session.scalars(query) if visible_user(u, scope)]


def create_first_admin(session: Session, email: str | None, password: str | None) -> tuple[User, str | None]:
    """Create the first administrator when there is none. Returns (user, generated password)."""
    roles = ensure_roles(session)
    existing = session.scalar(select(User).where(User.roles.contains(roles["admin"])))
    if existing is not None:
        return existing, None
    generated = None
    if not password:
        password = generated = secrets.token_urlsafe(12)
    admin = save_user(session, None, email=email or "admin@example.org", name="Administrator",
                      password=password, roles=[roles["admin"]], locations=[],
                      all_locations=True, scope=Scope(everything=True))
    return admin, generated
