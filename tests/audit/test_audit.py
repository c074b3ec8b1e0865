from sqlalchemy import select

from portal.audit.models import AuditEntry
from portal.audit.services import set_actor
from portal.locations.services import Scope, update_location


def _entries(session, entity_type, entity_id):
    return list(session.scalars(select(AuditEntry).where(
        AuditEntry.entity_type == entity_type, AuditEntry.entity_id == str(entity_id)).order_by(AuditEntry.id)))


def test_creating_changing_and_deleting_are_recorded_with_who_and_the_fields(db_session, country, make_user):
    actor = make_user("admin")
    set_actor(db_session, actor.id)
    village = country["NV1"]
    update_location(db_session, village, code="NV1", name="Renamed", parent=country["NW"],
                    scope=Scope(everything=True))
    db_session.flush()
    db_session.delete(village)
    db_session.flush()
    create, update, delete = _entries(db_session, "location", village.id)
    assert create.action == "create" and create.changes["code"] == [None, "NV1"]
    assert update.action == "update" and update.changes == {"name": ["Place NV1", "Renamed"]}
    assert update.actor_id == actor.id
    assert delete.action == "delete" and delete.changes["name"] == ["Renamed", None]


def test_changing_a_users_roles_records_what_was_added_and_removed(db_session, make_user):
    from portal.accounts.models import Role

    user = make_user("viewer")
    db_session.flush()
    user.roles = [db_session.scalar(select(Role).where(Role.name == "field_officer"))]
    db_session.flush()
    last = _entries(db_session, "user", user.id)[-1]
    assert last.changes["roles"] == {"added": ["Field officer"], "removed": ["Viewer (read only)"]}


def test_the_audit_page_filters_by_entity_and_hides_it_from_roles_without_permission(client, login, country):
    login("viewer")
    assert client.get("/admin/audit/").status_code == 403
    client.post("/logout")
    login("admin")
    page = client.get(f"/admin/audit/?entity_type=location&entity_id={country['NV1'].id}").get_data(as_text=True)
    assert "Place NV1" in page and "Place SV1" not in page


def test_identifiers_in_the_audit_log_are_masked_for_roles_without_pii(app, client, login, db_session):
    from portal.audit.services import record

    record(db_session, action="update", entity_type="individual", entity_id=1,
           changes={"national_id": ["AB1234567", "CD7654321"]})
    db_session.commit()
    login("admin")
    assert "CD7654321" in client.get("/admin/audit/?entity_type=individual").get_data(as_text=True)
    client.post("/logout")
    from sqlalchemy import select as sel

    from portal.accounts.models import Role
    from portal.accounts.services import set_role_permissions

    manager = db_session.scalar(sel(Role).where(Role.name == "program_manager"))
    set_role_permissions(manager, sorted(manager.permissions - {"individual.view_pii"}))
    db_session.commit()
    login("program_manager")
    page = client.get("/admin/audit/?entity_type=individual").get_data(as_text=True)
    assert "CD7654321" not in page and "•••••4321" in page


def test_changing_a_roles_permissions_records_the_permission_names_added_and_removed(db_session):
    from portal.accounts.models import Role
    from portal.accounts.services import set_role_permissions

    viewer = db_session.scalar(select(Role).where(Role.name == "viewer"))
    before = viewer.permissions
    kept = sorted(before)[1:]
    set_role_permissions(viewer, kept + ["audit.view"])
    db_session.flush()
    last = _entries(db_session, "role", viewer.id)[-1]
    assert last.changes["grants"] == {"added": ["audit.view"], "removed": [sorted(before)[0]]}


def test_creating_a_user_records_the_roles_and_locations_granted(db_session, country, make_user):
    actor = make_user("admin")
    set_actor(db_session, actor.id)
    user = make_user("field_officer", [country["ND"], country["SV1"]])
    [create] = _entries(db_session, "user", user.id)
    assert create.action == "create" and create.actor_id == actor.id
    assert create.changes["roles"] == {"added": ["Field officer"], "removed": []}
    assert create.changes["locations"] == {"added": ["Place ND (ND)", "Place SV1 (SV1)"], "removed": []}


def test_the_audit_page_lists_sign_ins_by_their_action(client, login):
    admin = login("admin")
    page = client.get("/admin/audit/?action=sign_in").get_data(as_text=True)
    assert f"{admin.email} signed in" in page and '<option selected>sign_in</option>' in page
    assert "signed in" not in client.get("/admin/audit/?action=sign_out").get_data(as_text=True)
