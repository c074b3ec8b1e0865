"""Two users saving the same unique code at the same moment: both pass the check before saving,
and the database refuses the second. That user gets a page saying so, not a server error."""
import pytest
from sqlalchemy import event, func, select

from portal.extensions import db
from portal.registry.models import Group, Individual


def test_a_household_code_taken_by_someone_else_at_the_same_moment_is_a_clear_refusal_not_a_server_error(
        client, login, country, db_session, make_individual):
    make_individual("Chikondi", "Banda", location=country["NV1"], national_id="MW1000001")
    login("admin")
    village = country["NV1"].id

    def someone_else_first(conn, cursor, statement, parameters, context, executemany):
        """Just before our INSERT, another user's household with the same code is saved."""
        if statement.startswith('INSERT INTO "group"') and not someone_else_first.done:
            someone_else_first.done = True
            cursor.execute("INSERT INTO \"group\" (code, name, kind, location_id, version) "
                           f"VALUES ('HH-9', 'Phiri family', 'cooperative', {village}, 1)")
    someone_else_first.done = False

    event.listen(db.engine, "before_cursor_execute", someone_else_first)
    try:
        response = client.post("/registry/groups/new", data={
            "code": "hh-9", "name": "Banda family", "kind": "household", "head": "MW1000001",
            "location": ""})
    finally:
        event.remove(db.engine, "before_cursor_execute", someone_else_first)
    body = response.get_data(as_text=True)
    assert response.status_code == 409
    assert "Someone else saved the same code" in body and "nothing of it was saved" in body
    # Ours was rolled back with the other user's row of this test's transaction: nothing is left.
    assert someone_else_first.done
    assert db_session.scalar(select(func.count()).select_from(Group)) == 0


@pytest.mark.live
def test_a_save_that_waits_too_long_for_a_row_another_save_holds_is_refused_with_a_message_and_saves_nothing(
        app, client, login, country, db_session, make_individual, monkeypatch):
    """On PostgreSQL a page waits for a locked row at most DB_LOCK_TIMEOUT_SECONDS, then says
    so, instead of hanging until the web server kills it (and answering with a server error)."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("lock timeouts are PostgreSQL's; SQLite waits for its write lock (busy_timeout)")
    person = make_individual("Chikondi", "Banda", location=country["NV1"], national_id="MW1000001")
    db_session.commit()
    login("admin")
    monkeypatch.setitem(app.config, "DB_LOCK_TIMEOUT_SECONDS", 0.3)
    form = {"first_name": "Chikondi", "last_name": "Banda-Phiri", "sex": person.sex,
            "birth_date": person.birth_date.isoformat(), "national_id_type": "national_id",
            "national_id": "MW1000001", "phone": "", "location": "NV1", "version": str(person.version)}
    with db.engine.connect() as other:  # another save holds the person's row
        other.execute(select(Individual.id).where(Individual.id == person.id).with_for_update())
        response = client.htmx("post", f"/registry/individuals/{person.id}/edit", data=form)
        other.rollback()
    assert response.status_code == 409
    assert "nothing of yours was saved" in response.get_data(as_text=True)
    db_session.expire_all()
    assert db_session.get(Individual, person.id).last_name == "Banda"
    # Without anyone holding it, the same form saves.
    assert client.htmx("post", f"/registry/individuals/{person.id}/edit", data=form).status_code == 200
