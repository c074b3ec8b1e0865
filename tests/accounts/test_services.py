from datetime import timedelta

import pytest
from sqlalchemy import select

from portal.accounts import services
from portal.accounts.models import Role
from portal.clock import now
from portal.errors import DomainError
from portal.locations.services import Scope
from tests.conftest import PASSWORD


def _auth(session, email, password, failures=3):
    return services.authenticate(session, email, password, max_failures=failures, lock_minutes=15)


def _change_password(session, user, current, new):
    return services.change_password(session, user, current, new, max_failures=3, lock_minutes=15)


def test_signing_in_with_the_right_password_returns_the_user_and_clears_failures(db_session, make_user):
    user = make_user("viewer")
    user.failed_logins = 2
    assert _auth(db_session, user.email.upper(), PASSWORD) is user
    assert user.failed_logins == 0 and user.last_login_at is not None


def test_wrong_password_and_unknown_email_get_the_same_message(db_session, make_user):
    user = make_user("viewer")
    with pytest.raises(DomainError) as wrong:
        _auth(db_session, user.email, "nope")
    with pytest.raises(DomainError) as unknown:
        _auth(db_session, "ghost@example.org", "nope")
    assert wrong.value.message == unknown.value.message
    assert wrong.value.message.startswith("Wrong email or password.")


def test_repeated_failures_lock_the_account_even_for_the_right_password(db_session, make_user):
    user = make_user("viewer")
    for _ in range(3):
        with pytest.raises(DomainError):
            _auth(db_session, user.email, "wrong-password")
    assert user.locked_until > now()
    with pytest.raises(DomainError, match="locked for 15 minutes"):
        _auth(db_session, user.email, PASSWORD)
    user.locked_until = now() - timedelta(seconds=1)
    assert _auth(db_session, user.email, PASSWORD) is user


def test_a_disabled_user_cannot_sign_in(db_session, make_user):
    admin, user = make_user("admin"), make_user("viewer")
    services.set_active(user, False, actor=admin)
    with pytest.raises(DomainError, match="disabled"):
        _auth(db_session, user.email, PASSWORD)


def test_an_admin_cannot_disable_their_own_account(make_user):
    admin = make_user("admin")
    with pytest.raises(DomainError, match="You cannot disable your own account: another administrator can."):
        services.set_active(admin, False, actor=admin)
    assert admin.active


def test_changing_the_password_invalidates_older_sessions(db_session, make_user):
    user = make_user("viewer")
    sign_in = services.start_sign_in(db_session, user)
    old_token = user.get_id()
    _change_password(db_session, user, PASSWORD, "a-much-better-password")
    assert services.load_user(db_session, old_token, sign_in) is None
    assert services.load_user(db_session, user.get_id(), sign_in) is user


def test_a_session_without_a_sign_in_or_with_an_ended_one_loads_nobody(db_session, make_user):
    user = make_user("viewer")
    sign_in = services.start_sign_in(db_session, user)
    db_session.flush()
    assert services.load_user(db_session, user.get_id(), None) is None
    assert services.load_user(db_session, user.get_id(), "made-up") is None
    assert services.load_user(db_session, user.get_id(), sign_in) is user
    services.end_sign_in(db_session, sign_in)
    assert services.load_user(db_session, user.get_id(), sign_in) is None


def test_short_passwords_and_a_wrong_current_password_are_refused(db_session, make_user):
    user = make_user("viewer")
    with pytest.raises(DomainError, match="current password"):
        _change_password(db_session, user, "wrong", "a-much-better-password")
    with pytest.raises(DomainError, match="at least 10"):
        _change_password(db_session, user, PASSWORD, "short")


def test_the_admin_role_keeps_every_permission_and_cannot_lose_user_management(db_session):
    from sqlalchemy import select

    admin = db_session.scalar(select(Role).where(Role.name == "admin"))
    with pytest.raises(DomainError):
        services.set_role_permissions(admin, ["individual.view"])
    viewer = db_session.scalar(select(Role).where(Role.name == "viewer"))
    services.set_role_permissions(viewer, ["individual.view", "audit.view"])
    assert viewer.permissions == {"individual.view", "audit.view"}
    with pytest.raises(DomainError, match="Unknown"):
        services.set_role_permissions(viewer, ["money.print"])


def test_no_permission_can_be_taken_from_the_admin_role_even_by_an_administrator(db_session):
    admin = db_session.scalar(select(Role).where(Role.name == "admin"))
    everything = frozenset(admin.permissions)
    with pytest.raises(DomainError, match="keeps every permission"):
        services.set_role_permissions(admin, sorted(everything - {"individual.view_pii"}),
                                      actor_permissions=everything)
    # (Taken away, only someone who has it could give it back: no administrator would.)
    assert admin.permissions == everything


def test_a_locked_account_still_has_its_password_checked_so_its_answer_takes_as_long(
        db_session, make_user, monkeypatch):
    from portal.accounts.models import User

    user = make_user("viewer")
    user.locked_until = now() + timedelta(minutes=10)
    checked = []
    real = User.check_password
    monkeypatch.setattr(User, "check_password", lambda self, password: checked.append(self) or real(self, password))
    with pytest.raises(DomainError, match="Wrong email or password"):
        _auth(db_session, user.email, PASSWORD)
    # Answered without the slow hash check, the lock told anyone by the time that the email
    # has an account.
    assert checked == [user]


def test_the_role_of_the_last_active_user_managers_keeps_user_management(db_session, make_user):
    manager = db_session.scalar(select(Role).where(Role.name == "program_manager"))
    services.set_role_permissions(manager, sorted(manager.permissions | {"user.manage"}))
    make_user("program_manager")
    disabled_admin = make_user("admin")
    disabled_admin.active = False
    db_session.flush()
    with pytest.raises(DomainError, match="Nobody active would manage users"):
        services.set_role_permissions(manager, sorted(manager.permissions - {"user.manage"}))
    assert "user.manage" in manager.permissions
    make_user("admin")
    services.set_role_permissions(manager, sorted(manager.permissions - {"user.manage"}))
    assert "user.manage" not in manager.permissions


def test_a_user_manager_limited_to_a_district_sees_and_assigns_only_that_district(db_session, make_user, country):
    north = Scope.for_user(make_user("admin", [country["ND"]]))
    inside = make_user("field_officer", [country["NV1"]])
    outside = make_user("field_officer", [country["SV1"]])
    everywhere = make_user("viewer")
    visible = services.list_users(db_session, scope=north)
    assert inside in visible and outside not in visible and everywhere not in visible
    with pytest.raises(DomainError, match="Outside your area"):
        services.resolve_locations(db_session, ["SV1"], north)
    with pytest.raises(DomainError, match="all locations"):
        services.save_user(db_session, None, email="x@example.org", name="X", password="long-enough-pw",
                           roles=[], locations=[], all_locations=True, scope=north)


def test_the_first_admin_is_created_once_with_a_generated_password(db_session):
    from sqlalchemy import select

    from portal.accounts.models import User

    admin, password = services.create_first_admin(db_session, "boss@example.org", None)
    assert password and admin.check_password(password) and admin.all_locations
    again, second = services.create_first_admin(db_session, "other@example.org", None)
    assert again is admin and second is None
    assert db_session.scalar(select(User).where(User.email == "other@example.org")) is None


def test_loading_the_signed_in_user_with_roles_and_locations_takes_one_statement(
        db_session, make_user, country, count_queries):
    from portal.accounts.services import load_user

    user = make_user("field_officer", [country["ND"]])
    sign_in = services.start_sign_in(db_session, user)
    db_session.commit()
    token = user.get_id()
    db_session.expire_all()
    with count_queries() as statements:
        loaded = load_user(db_session, token, sign_in)
        assert loaded.can("individual.view") and not loaded.can("user.manage")
        assert [place.code for place in loaded.locations] == ["ND"]
    assert statements() == 1


def _regional_admin_role(session):
    """A custom role that manages users but holds none of the admin's other powers."""
    from portal.accounts.models import RolePermission

    role = Role(name="regional_admin", label="Regional admin",
                grants=[RolePermission(permission=p) for p in ("user.manage", "individual.view")])
    session.add(role)
    session.flush()
    return role


def _save(session, user, roles, *, actor, **fields):
    values = {"email": user.email if user else "new@example.org", "name": user.name if user else "New",
              "password": "" if user else "long-enough-pw", "roles": roles,
              "locations": list(user.locations) if user else [], "all_locations": False}
    return services.save_user(session, user, **{**values, **fields}, scope=Scope.for_user(actor),
                              actor_permissions=actor.permissions)


def test_a_user_manager_cannot_grant_a_role_holding_permissions_they_lack(db_session, make_user, country):
    regional = _regional_admin_role(db_session)
    admin_role = db_session.scalar(select(Role).where(Role.name == "admin"))
    actor = make_user(None, [country["N"]])
    actor.roles = [regional]
    db_session.flush()
    with pytest.raises(DomainError, match="only grant roles .*: Administrator"):
        _save(db_session, actor, [regional, admin_role], actor=actor)
    with pytest.raises(DomainError, match="only grant roles .*: Administrator"):
        _save(db_session, None, [admin_role], actor=actor, locations=[country["NV1"]])
    helper = _save(db_session, None, [regional], actor=actor, locations=[country["NV1"]])
    assert helper.roles == [regional]  # roles within the manager's own powers still go through
    everyone = make_user("admin")
    _save(db_session, helper, [admin_role], actor=everyone)
    assert helper.roles == [admin_role]  # and a full admin still grants anything


def test_a_user_manager_cannot_take_away_a_role_holding_permissions_they_lack(db_session, make_user, country):
    regional = _regional_admin_role(db_session)
    actor = make_user(None, [country["N"]])
    actor.roles = [regional]
    national_admin = make_user("admin", [country["N"]])  # inside the manager's area
    db_session.flush()
    with pytest.raises(DomainError, match="only change users whose permissions you have yourself"):
        _save(db_session, national_admin, [regional], actor=actor)
    assert [r.name for r in national_admin.roles] == ["admin"]
