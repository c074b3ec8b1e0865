import re

import pytest
from sqlalchemy import select

from portal.accounts.models import Role, User
from portal.audit.models import AuditEntry
from tests.conftest import PASSWORD


def test_signing_in_and_out_through_the_pages(client, make_user, db_session):
    user = make_user("viewer")
    db_session.commit()
    assert client.get("/").status_code == 302
    response = client.post("/login", data={"email": user.email, "password": PASSWORD})
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    client.post("/logout")
    assert client.get("/").status_code == 302


def test_signing_in_and_out_is_in_the_audit_log_as_the_user_and_a_wrong_password_is_not_a_sign_in(
        client, make_user, db_session):
    user = make_user("viewer")
    db_session.commit()

    def entries():
        db_session.expire_all()
        return [(e.action, e.actor_id, e.summary) for e in db_session.scalars(
            select(AuditEntry).where(AuditEntry.entity_type == "user", AuditEntry.entity_id == str(user.id),
                                     AuditEntry.action != "create")  # (the user's creation)
            .order_by(AuditEntry.id))]

    client.post("/login", data={"email": user.email, "password": "not the password"})
    assert entries() == []
    client.post("/login", data={"email": user.email, "password": PASSWORD})
    assert entries() == [("sign_in", user.id, f"{user.email} signed in")]
    client.post("/logout")
    assert entries()[1:] == [("sign_out", user.id, "Signed out")]
    client.post("/logout")  # signed out already: nothing more to record
    assert len(entries()) == 2


def test_a_wrong_password_shows_the_form_again_with_a_message(client, make_user, db_session):
    user = make_user("viewer")
    db_session.commit()
    response = client.post("/login", data={"email": user.email, "password": "wrong"})
    assert response.status_code == 422
    assert "Wrong email or password." in response.get_data(as_text=True)


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/", "/\\evil.example/",
                                    "/\t/evil.example/"])
def test_the_sign_in_form_only_redirects_to_local_pages(client, make_user, db_session, target):
    user = make_user("viewer")
    db_session.commit()
    response = client.post("/login", query_string={"next": target},
                           data={"email": user.email, "password": PASSWORD})
    assert response.headers["Location"] == "/"


def test_an_admin_creates_a_user_with_roles_and_locations(client, login, country, db_session):
    login("admin")
    role = db_session.scalar(select(Role).where(Role.name == "field_officer"))
    response = client.post("/admin/users/new", data={
        "email": "New.Officer@example.org", "name": "New Officer", "password": "long-enough-pw",
        "roles": [str(role.id)], "locations": "ND, SV1"})
    assert response.status_code == 302, response.get_data(as_text=True)
    user = db_session.scalar(select(User).where(User.email == "new.officer@example.org"))
    assert [r.name for r in user.roles] == ["field_officer"]
    assert sorted(loc.code for loc in user.locations) == ["ND", "SV1"]
    entry = db_session.scalar(select(AuditEntry).where(AuditEntry.entity_type == "user",
                                                       AuditEntry.entity_id == str(user.id)))
    assert entry.action == "create" and "password_hash" not in entry.changes


def test_an_unknown_location_code_is_a_field_error_and_nothing_is_saved(client, login, db_session):
    login("admin")
    response = client.post("/admin/users/new", data={
        "email": "x@example.org", "name": "X", "password": "long-enough-pw", "locations": "NOPE"})
    assert response.status_code == 422
    assert "Unknown location code(s): NOPE." in response.get_data(as_text=True)
    assert db_session.scalar(select(User).where(User.email == "x@example.org")) is None


def test_disabling_a_user_signs_them_out_everywhere(app, client, login, make_user, db_session):
    victim = make_user("viewer")
    db_session.commit()
    other = app.test_client()
    other.post("/login", data={"email": victim.email, "password": PASSWORD})
    assert other.get("/").status_code == 200
    login("admin")
    client.post(f"/admin/users/{victim.id}/active", data={"active": "0"})
    assert other.get("/").status_code == 302


def test_the_user_list_offers_no_disable_on_ones_own_account_and_refuses_it_if_sent(
        client, login, make_user, db_session):
    other = make_user("viewer")
    me = login("admin")
    page = client.get("/admin/users").get_data(as_text=True)
    assert f'action="/admin/users/{other.id}/active"' in page
    assert f'action="/admin/users/{me.id}/active"' not in page and "Your account" in page
    response = client.post(f"/admin/users/{me.id}/active", data={"active": "0"})
    assert ("You cannot disable your own account: another administrator can."
            in client.get(response.headers["Location"]).get_data(as_text=True))
    db_session.expire_all()
    assert db_session.get(User, me.id).active


def test_a_district_admin_cannot_open_a_user_of_another_district(client, login, make_user, country, db_session):
    outsider = make_user("field_officer", [country["SD"]])
    db_session.commit()
    login("admin", [country["ND"]])
    assert client.get(f"/admin/users/{outsider.id}").status_code == 404
    assert outsider.email not in client.get("/admin/users").get_data(as_text=True)


def test_an_admin_edits_a_roles_permissions_in_the_page(client, login, db_session):
    login("admin")
    viewer = db_session.scalar(select(Role).where(Role.name == "viewer"))
    response = client.post(f"/admin/roles/{viewer.id}", data={"permissions": ["individual.view", "audit.view"]})
    assert response.status_code == 302
    db_session.expire_all()
    assert viewer.permissions == {"individual.view", "audit.view"}


def test_changing_the_password_keeps_this_session_and_needs_the_current_one(client, login):
    login("viewer")
    bad = client.post("/account/password", data={"current": "wrong", "password": "new-password-1",
                                                  "confirm": "new-password-1"})
    assert bad.status_code == 422
    good = client.post("/account/password", data={"current": PASSWORD, "password": "new-password-1",
                                                   "confirm": "new-password-1"})
    assert good.status_code == 302
    assert client.get("/").status_code == 200


def _post_user(client, user, **fields):
    """The user form as an administrator sends it, with ``fields`` changed."""
    return client.post(f"/admin/users/{user.id}", data={
        "email": user.email, "name": user.name, "roles": [str(r.id) for r in user.roles],
        "all_locations": "y", **fields})


def _password_entry(session, user):
    """The one audit entry of a password change for ``user``, which never holds the hash."""
    session.expire_all()
    [entry] = session.scalars(select(AuditEntry).where(
        AuditEntry.action == "password", AuditEntry.entity_type == "user",
        AuditEntry.entity_id == str(user.id))).all()
    assert user.password_hash not in entry.summary + str(entry.changes)
    return entry


def test_changing_your_own_password_is_audited_without_the_hash(client, login, db_session):
    user = login("viewer")
    client.post("/account/password", data={"current": PASSWORD, "password": "new-password-1",
                                           "confirm": "new-password-1"})
    entry = _password_entry(db_session, user)
    assert entry.actor_id == user.id and "changed their own password" in entry.summary


def test_an_admin_resetting_a_users_password_is_audited_with_who_and_for_whom(
        client, login, make_user, db_session):
    victim = make_user("viewer")
    admin = login("admin")
    response = _post_user(client, victim, password="reset-password-1", locations="")
    assert response.status_code == 302, response.get_data(as_text=True)
    entry = _password_entry(db_session, victim)
    assert entry.actor_id == admin.id and "reset by an administrator" in entry.summary


def test_a_user_form_posted_without_its_location_field_is_saved_not_a_server_error(
        client, login, make_user, db_session):
    user = make_user("viewer")
    login("admin")
    response = _post_user(client, user, name="Renamed")  # no "locations" field at all
    assert response.status_code == 302
    db_session.expire_all()
    assert db_session.get(type(user), user.id).name == "Renamed"


@pytest.fixture
def district_admin(login, country, db_session):
    """Signed in: a user manager of region N who may view people, nothing more."""
    from portal.accounts.models import RolePermission

    regional = Role(name="regional_admin", label="Regional admin",
                    grants=[RolePermission(permission=p) for p in ("user.manage", "individual.view")])
    db_session.add(regional)
    me = login(None, [country["N"]])
    me.roles = [regional]
    db_session.commit()
    return me, regional


def test_a_district_admin_giving_itself_the_admin_role_is_refused_on_the_form(
        client, country, db_session, make_individual, district_admin):
    make_individual("Amina", "Banda", location=country["NV1"], national_id="8812345670")
    db_session.commit()
    me, regional = district_admin
    admin = db_session.scalar(select(Role).where(Role.name == "admin"))
    response = client.post(f"/admin/users/{me.id}", data={
        "email": me.email, "name": me.name, "roles": [admin.id, regional.id], "locations": "N"})
    assert response.status_code == 422
    assert ("You can only grant roles whose permissions you have yourself: Administrator."
            in response.get_data(as_text=True))
    db_session.expire_all()
    assert [r.name for r in db_session.get(User, me.id).roles] == ["regional_admin"]
    assert "8812345670" not in client.get("/registry/individuals").get_data(as_text=True)


def test_a_district_admin_may_neither_reset_the_password_of_nor_disable_a_national_admin_in_its_area(
        client, country, db_session, make_user, district_admin):
    boss = make_user("admin", [country["N"]], email="boss@example.org")
    db_session.commit()
    admin = db_session.scalar(select(Role).where(Role.name == "admin"))
    response = client.post(f"/admin/users/{boss.id}", data={
        "email": "mine@example.org", "name": boss.name, "password": "a-new-long-password-9",
        "roles": [admin.id], "locations": "N"})
    assert response.status_code == 422
    assert "You can only change users whose permissions you have yourself." in response.get_data(as_text=True)
    client.post(f"/admin/users/{boss.id}/active", data={"active": "0"})
    db_session.expire_all()
    boss = db_session.get(User, boss.id)
    assert boss.email == "boss@example.org" and boss.active and boss.check_password(PASSWORD)


def test_a_user_manager_who_sees_everything_cannot_give_their_own_role_a_permission_they_lack(
        client, login, db_session):
    from portal.accounts.models import RolePermission

    managers = Role(name="user_managers", label="User managers",
                    grants=[RolePermission(permission=p) for p in ("user.manage", "individual.view")])
    db_session.add(managers)
    me = login(None)  # all locations
    me.roles = [managers]
    db_session.commit()
    response = client.post(f"/admin/roles/{managers.id}", data={
        "permissions": ["user.manage", "individual.view", "individual.view_pii"]})
    assert response.status_code == 422
    assert ("You can only give or take away permissions you have yourself: individual.view_pii."
            in response.get_data(as_text=True))
    db_session.expire_all()
    assert db_session.get(Role, managers.id).permissions == {"user.manage", "individual.view"}



def _sign_in_message(client, email: str, password: str) -> str:
    page = client.post("/login", data={"email": email, "password": password}).get_data(as_text=True)
    found = re.search(r'<p class="flash flash-error" role="alert">(.*?)</p>', page)
    return found.group(1) if found else ""


def test_the_last_administrator_cannot_take_the_admin_role_away_from_themselves(
        client, login, db_session):
    admin_role = db_session.scalar(select(Role).where(Role.name == "admin"))
    viewer = db_session.scalar(select(Role).where(Role.name == "viewer"))
    me = login("admin")
    assert db_session.scalars(select(User).where(User.roles.contains(admin_role),
                                                 User.id != me.id)).all() == []
    response = client.post(f"/admin/users/{me.id}", data={
        "email": me.email, "name": me.name, "roles": [str(viewer.id)], "all_locations": "y"})
    assert response.status_code < 500
    db_session.expire_all()
    # Nobody else may manage users or roles: the portal would have no administrator left.
    assert [r.name for r in db_session.get(User, me.id).roles] == ["admin"]


def test_a_locked_account_and_an_unknown_email_get_the_same_sign_in_message(
        app, client, make_user, db_session):
    user = make_user("viewer")
    db_session.commit()
    tries = app.config["LOGIN_MAX_FAILURES"]
    for _ in range(tries):
        _sign_in_message(client, user.email, "wrong-password")
        _sign_in_message(client, "nobody-here@example.org", "wrong-password")
    known = _sign_in_message(client, user.email, "wrong-password")
    unknown = _sign_in_message(client, "nobody-here@example.org", "wrong-password")
    # Otherwise anyone can tell which emails have an account by trying a few passwords.
    assert known == unknown


def test_guessing_the_current_password_on_the_password_form_is_limited_like_signing_in(
        app, client, login, db_session):
    user = login("viewer")
    tries = app.config["LOGIN_MAX_FAILURES"]
    for n in range(tries):
        response = client.post("/account/password", data={
            "current": f"guess-number-{n}", "password": "new-password-1", "confirm": "new-password-1"})
        if n < tries - 1:
            assert response.status_code == 422 and "not right" in response.get_data(as_text=True)
    assert response.status_code == 302 and response.headers["Location"].endswith("/login")
    again = client.post("/account/password", data={
        "current": PASSWORD, "password": "new-password-1", "confirm": "new-password-1"})
    assert again.status_code == 302 and "/login" in again.headers["Location"]  # signed out
    db_session.expire_all()
    # A session left open on a shared tablet must not be an unlimited password oracle.
    assert db_session.get(User, user.id).check_password(PASSWORD)
    assert db_session.get(User, user.id).locked_until is not None


def test_an_administrator_cannot_reset_their_own_password_without_the_current_one(client, login, db_session):
    me = login("admin")
    admin_role = db_session.scalar(select(Role).where(Role.name == "admin"))
    response = client.post(f"/admin/users/{me.id}", data={
        "email": me.email, "name": me.name, "roles": [str(admin_role.id)], "all_locations": "y",
        "password": "a-brand-new-password"})
    assert response.status_code == 422 and "account page" in response.get_data(as_text=True)
    db_session.expire_all()
    assert db_session.get(User, me.id).check_password(PASSWORD)


def test_the_only_administrator_who_sees_all_locations_cannot_limit_themselves_to_a_district(
        client, login, db_session, country):
    me = login("admin")
    response = client.post(f"/admin/users/{me.id}", data={
        "email": me.email, "name": me.name, "roles": [str(r.id) for r in me.roles], "locations": "N"})
    assert response.status_code == 422
    assert "only active user who manages users and sees all locations" in response.get_data(as_text=True)
    db_session.expire_all()
    # Only such a user may change roles or grant all locations: nobody could undo it.
    assert db_session.get(User, me.id).all_locations


def test_a_national_administrator_cannot_leave_only_district_administrators_to_manage_users(
        client, login, make_user, db_session, country):
    viewer = db_session.scalar(select(Role).where(Role.name == "viewer"))
    make_user("admin", [country["N"]])
    db_session.commit()
    me = login("admin")
    response = client.post(f"/admin/users/{me.id}", data={
        "email": me.email, "name": me.name, "roles": [str(viewer.id)], "all_locations": "y"})
    assert response.status_code == 422
    db_session.expire_all()
    assert [r.name for r in db_session.get(User, me.id).roles] == ["admin"]
    make_user("admin")  # a second national administrator: now the first may step down
    db_session.commit()
    response = client.post(f"/admin/users/{me.id}", data={
        "email": me.email, "name": me.name, "roles": [str(viewer.id)], "all_locations": "y"})
    assert response.status_code == 302, response.get_data(as_text=True)


def test_a_location_code_or_a_role_given_twice_in_the_user_form_is_saved_once(client, login, db_session, country):
    login("admin")
    role = db_session.scalar(select(Role).where(Role.name == "field_officer"))
    response = client.post("/admin/users/new", data={
        "email": "twice@example.org", "name": "Twice", "password": "long-enough-pw",
        "roles": [str(role.id), str(role.id)], "locations": "ND, ND"})
    assert response.status_code == 302, response.get_data(as_text=True)
    user = db_session.scalar(select(User).where(User.email == "twice@example.org"))
    assert [r.name for r in user.roles] == ["field_officer"]
    assert [loc.code for loc in user.locations] == ["ND"]


def test_an_administrator_resetting_the_password_of_a_locked_account_unlocks_it(
        app, client, login, make_user, db_session):
    locked = make_user("viewer")
    db_session.commit()
    for _ in range(app.config["LOGIN_MAX_FAILURES"]):
        _sign_in_message(client, locked.email, "wrong-password")
    db_session.expire_all()
    assert db_session.get(User, locked.id).locked_until is not None
    login("admin")
    response = client.post(f"/admin/users/{locked.id}", data={
        "email": locked.email, "name": locked.name, "password": "a-new-password",
        "roles": [str(r.id) for r in locked.roles], "all_locations": "y"})
    assert response.status_code == 302, response.get_data(as_text=True)
    client.post("/logout")
    response = client.post("/login", data={"email": locked.email, "password": "a-new-password"})
    assert response.status_code == 302
