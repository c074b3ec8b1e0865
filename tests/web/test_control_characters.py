"""Invisible control characters (pasted from a PDF or a chat) are refused where they are typed,
with a message beside the field, and records holding one from before still export."""
import io
from datetime import date

from openpyxl import load_workbook
from sqlalchemy import func, select

from portal.registry.models import Group, Individual
from portal.registry.validation import clean_custom
from tests.registry.test_validation import field

PERSON = {"first_name": "Thandiwe", "last_name": "Nyirenda", "sex": "F", "birth_date": "1985-05-05",
          "national_id_type": "national_id", "national_id": "MW5555555", "phone": "0991 555 555",
          "location": "NV1"}


def test_a_person_typed_with_a_control_character_in_a_name_is_refused_beside_that_field(
        client, login, country, db_session):
    login("admin")
    response = client.post("/registry/individuals/new", data={**PERSON, "last_name": "Nyi\x02renda"})
    body = response.get_data(as_text=True)
    assert response.status_code == 422
    assert "This contains an invisible control character (U+0002)" in body
    assert 'value="Thandiwe"' in body  # what was typed in the other fields comes back
    assert db_session.scalar(select(func.count()).select_from(Individual)) == 0


def test_a_household_name_with_a_control_character_is_refused_and_nothing_is_created(
        client, login, country, db_session, make_individual):
    make_individual("Chikondi", "Banda", location=country["NV1"], national_id="MW1000001")
    login("admin")
    response = client.post("/registry/groups/new", data={"code": "HH-9", "name": "Banda\x1bfamily",
                                                       "kind": "household", "head": "MW1000001",
                                                       "location": ""})
    assert "invisible control character (U+001B)" in response.get_data(as_text=True)
    assert db_session.scalar(select(func.count()).select_from(Group)) == 0


def test_tabs_and_line_breaks_are_ordinary_text_in_a_form(client, login, country, db_session):
    login("admin")
    response = client.post("/registry/groups/new", data={"code": "CO-9", "name": "Maize\tgrowers",
                                                       "kind": "cooperative", "head": "", "location": "NV1"})
    assert response.status_code == 303
    assert db_session.scalar(select(Group.name)) == "Maize\tgrowers"


def test_a_custom_text_value_with_a_control_character_gets_a_readable_error():
    _, errors = clean_custom([field("school")], {"school": "Chilumba\x07"})
    assert errors == {"school": "School contains an invisible control character (U+0007)."}


def test_a_person_saved_with_a_control_character_before_the_forms_refused_it_still_exports_to_xlsx(
        client, login, country, make_individual):
    make_individual("Chi\x01kondi", "Banda", location=country["NV1"], birth_date=date(1990, 1, 1))
    login("admin")
    response = client.get("/registry/individuals/export?format=xlsx&q=banda")
    assert response.status_code == 200
    sheet = load_workbook(io.BytesIO(response.get_data())).active
    rows = [[c.value for c in row] for row in sheet.iter_rows()]
    assert rows[1][1] == "Chikondi"
