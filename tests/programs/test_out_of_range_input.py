"""Numbers no column or query parameter could hold, sent to programs and custom fields: each
is refused with a message, never a server error or a value that breaks later queries."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from portal.programs.models import Program
from portal.registry.models import Individual
from portal.registry.services import save_custom_field

PERSON = {"first_name": "Thandiwe", "last_name": "Nyirenda", "sex": "F", "birth_date": "1985-05-05",
          "national_id_type": "national_id", "national_id": "MW5555555", "phone": "0991 555 555",
          "location": "NV1"}
TOO_LARGE = "100000000000000000000000"  # no 64-bit integer column or parameter holds it


def _custom_field(db_session, name, type, *, unique=False):
    save_custom_field(db_session, None, name=name, label=name.title(), type=type, required=False,
                      unique=unique, pattern="", choices=[], actor_id=None)
    db_session.commit()


# --- program form ---------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["institution_id", "scheme_id"])
def test_a_program_form_naming_an_institution_or_scheme_id_too_large_for_the_database_is_refused_not_a_crash(
        client, login, db_session, field):
    login("program_manager")
    data = {"code": "BIGID", "name": "Big id", "beneficiary_kind": "individual",
            "institution_id": "0", "scheme_id": "0", field: TOO_LARGE}
    response = client.post("/programs/new", data=data)
    assert response.status_code == 422
    assert db_session.scalar(select(Program).where(Program.code == "BIGID")) is None


def test_a_program_amount_sent_as_a_signalling_nan_is_a_form_error_not_a_crash(client, login,
                                                                              db_session):
    login("program_manager")
    response = client.post("/programs/new", data={
        "code": "SNAN", "name": "Not a number", "beneficiary_kind": "individual",
        "institution_id": "0", "scheme_id": "0", "amount": "sNaN"})
    assert response.status_code == 422
    assert db_session.scalar(select(Program).where(Program.code == "SNAN")) is None


# --- enrolment by criteria ------------------------------------------------------------------

def test_criteria_comparing_a_custom_whole_number_too_large_for_the_database_answer_with_an_error_not_a_crash(
        client, login, db_session, program, person):
    _custom_field(db_session, "income", "integer")
    plan = program()
    person(custom={"income": 10})
    db_session.commit()
    login("program_manager")
    response = client.get(f"/programs/{plan.id}/enrol/criteria?cf1=income&op1=%3C&v1={TOO_LARGE}")
    assert response.status_code in (200, 422)
    assert "Income" in response.get_data(as_text=True)


# --- registry: custom values ----------------------------------------------------------------

def test_a_unique_custom_whole_number_too_large_for_the_database_is_refused_on_enrolment_not_a_crash(
        client, login, country, db_session):
    _custom_field(db_session, "card", "integer", unique=True)
    login("admin")
    response = client.post("/registry/individuals/new", data={**PERSON, "cf_card": TOO_LARGE})
    assert response.status_code == 422
    assert db_session.scalar(select(Individual).where(Individual.national_id == "MW5555555")) is None


def test_a_decimal_custom_value_too_large_for_a_number_is_refused_rather_than_stored_as_infinity(
        client, login, country, db_session, program):
    _custom_field(db_session, "income", "decimal")
    plan = program()
    db_session.commit()
    login("admin")
    response = client.post("/registry/individuals/new", data={**PERSON, "cf_income": "1e400"})
    assert response.status_code == 422
    assert "must be a number" in response.get_data(as_text=True)
    assert client.get(f"/programs/{plan.id}/enrol/criteria?cf1=income&op1=%3E&v1=5").status_code == 200
