from datetime import date

import pytest

from portal.locations.services import Scope
from portal.registry.models import CustomField, Individual
from portal.registry.validation import (check_custom_unique, clean_custom, clean_individual,
                                        find_duplicates, name_key, parse_date)

EVERYTHING = Scope(everything=True)


def field(name, type="text", **kwargs):
    return CustomField(name=name, label=name.replace("_", " ").title(), type=type,
                       required=kwargs.pop("required", False), unique=kwargs.pop("unique", False),
                       active=True, choices=kwargs.pop("choices", []), **kwargs)


def person(country, **overrides):
    raw = {"first_name": "Chikondi", "last_name": "Banda", "sex": "female",
           "birth_date": "1990-04-12", "national_id": "MW1234567", "phone": "+265 991 234 567",
           "location": "NV1"}
    raw.update(overrides)
    return raw


def test_the_name_key_is_surname_first_lower_case_and_without_accents():
    assert name_key("Chikondi", None, "Banda") == "banda chikondi"
    assert name_key(" Éléonore ", "Marie", "MÜLLER") == "muller eleonore marie"


def test_slash_dates_are_read_by_the_day_first_setting_and_ambiguity_is_refused():
    assert parse_date("03/04/1990", day_first=True) == date(1990, 4, 3)
    assert parse_date("03/04/1990", day_first=False) == date(1990, 3, 4)
    assert parse_date("25/04/1990") == date(1990, 4, 25)
    with pytest.raises(ValueError, match="two ways"):
        parse_date("03/04/1990")


def test_custom_values_are_typed_for_json():
    fields = [field("children", "integer"), field("income", "decimal"), field("disabled", "boolean"),
              field("registered", "date"), field("crop", "choice", choices=["Maize", "Cassava"])]
    values, errors = clean_custom(fields, {"children": "3", "income": "1,250.50", "disabled": "Yes",
                                          "registered": "2024-01-31", "crop": "maize"})
    assert errors == {}
    assert values == {"children": 3, "income": 1250.5, "disabled": True,
                      "registered": "2024-01-31", "crop": "Maize"}


def test_bad_custom_values_get_one_readable_error_each():
    fields = [field("children", "integer"), field("disabled", "boolean"),
              field("crop", "choice", choices=["Maize"]), field("card", pattern=r"[A-Z]{2}\d{4}"),
              field("village_head", required=True)]
    _, errors = clean_custom(fields, {"children": "two", "disabled": "perhaps", "crop": "rice",
                                      "card": "ab12"})
    assert errors == {
        "children": "Children must be a whole number.",
        "disabled": "Disabled must be yes or no.",
        "crop": "Crop must be one of Maize.",
        "card": "Card does not have the expected format.",
        "village_head": "Village Head is required.",
    }


def test_spreadsheet_cells_arrive_as_numbers_and_still_validate():
    values, errors = clean_custom([field("children", "integer"), field("card")],
                                  {"children": 4.0, "card": 123456.0})
    assert errors == {} and values == {"children": 4, "card": "123456"}


def test_a_unique_custom_value_already_held_by_a_living_person_is_refused(db_session, make_individual):
    card = field("card", unique=True)
    holder = make_individual(custom={"card": "AB1234"})
    assert check_custom_unique(db_session, [card], {"card": "AB1234"}) == \
        {"card": "Card AB1234 is already used by someone else."}
    assert check_custom_unique(db_session, [card], {"card": "AB1234"}, exclude_id=holder.id) == {}
    assert check_custom_unique(db_session, [card], {"card": "ZZ9999"}) == {}


def test_a_valid_person_becomes_model_values(db_session, country):
    values, errors = clean_individual(db_session, person(country), custom_fields=[], scope=EVERYTHING)
    assert errors == {}
    assert values["sex"] == "F" and values["birth_date"] == date(1990, 4, 12)
    assert values["name_key"] == "banda chikondi"
    assert values["phone"] == "+265991234567"
    assert values["national_id_type"] == "national_id"
    assert values["location_id"] == country["NV1"].id
    individual = Individual(**values)
    db_session.add(individual)
    db_session.flush()


def test_every_bad_field_of_a_person_is_named(db_session, country):
    raw = person(country, first_name="", sex="maybe", birth_date="2999-01-01", phone="12",
                 national_id="MW 12;3", location="NW")
    _, errors = clean_individual(db_session, raw, custom_fields=[], scope=EVERYTHING)
    assert set(errors) == {"first_name", "sex", "birth_date", "phone", "national_id", "location"}
    assert "village" in errors["location"]


def test_a_village_outside_the_users_scope_is_refused(db_session, country):
    north = Scope(paths=(country["N"].path,))
    _, errors = clean_individual(db_session, person(country, location="SV1"), custom_fields=[],
                                 scope=north)
    assert errors == {"location": "The code SV1 is a place outside your locations."}


def test_a_place_outside_the_users_scope_is_not_named_even_when_it_is_no_village(db_session, country):
    north = Scope(paths=(country["N"].path,))
    for code in ("SV1", "SD", "sw"):
        _, errors = clean_individual(db_session, person(country, location=code), custom_fields=[],
                                     scope=north)
        assert errors["location"] == f"The code {code} is a place outside your locations."
        assert "Place" not in errors["location"]
    _, errors = clean_individual(db_session, person(country, location="ND"), custom_fields=[], scope=north)
    assert errors["location"] == "Place ND is a district; choose a village."


def test_custom_fields_are_checked_with_the_person(db_session, country):
    fields = [field("children", "integer", required=True)]
    _, errors = clean_individual(db_session, person(country), custom_fields=fields, scope=EVERYTHING)
    assert errors == {"children": "Children is required."}
    values, errors = clean_individual(db_session, person(country, children="2"), custom_fields=fields,
                                      scope=EVERYTHING)
    assert errors == {} and values["custom"] == {"children": 2}


def test_the_same_living_national_id_blocks_and_a_deleted_one_does_not(db_session, country, make_individual):
    existing = make_individual(national_id="MW7777777", location=country["NV1"])
    blocking, _ = find_duplicates(db_session, national_id="MW7777777", first_name="Other",
                                  last_name="Person", birth_date=date(2001, 1, 1), location_id=country["SV1"].id)
    assert blocking == [existing]
    from portal.clock import now

    existing.deleted_at = now()
    db_session.flush()
    blocking, _ = find_duplicates(db_session, national_id="MW7777777", first_name="Other",
                                  last_name="Person", birth_date=date(2001, 1, 1), location_id=country["SV1"].id)
    assert blocking == []


def test_a_similar_name_with_the_same_birth_date_in_the_same_district_warns(db_session, country, make_individual):
    twin = make_individual(first_name="Chikondi", last_name="Banda", birth_date=date(1990, 4, 12),
                           location=country["NV2"], national_id=None)
    make_individual(first_name="Chikondi", last_name="Banda", birth_date=date(1990, 4, 12),
                    location=country["SV1"], national_id=None)  # another district
    make_individual(first_name="Chikondi", last_name="Banda", birth_date=date(1991, 4, 12),
                    location=country["NV1"], national_id=None)  # another birth date
    blocking, warnings = find_duplicates(db_session, national_id=None, first_name="Chikondy",
                                         last_name="Banda", birth_date=date(1990, 4, 12),
                                         location_id=country["NV1"].id)
    assert blocking == [] and warnings == [twin]
    _, warnings = find_duplicates(db_session, national_id=None, first_name="Chikondy",
                                  last_name="Banda", birth_date=date(1990, 4, 12),
                                  location_id=country["NV1"].id, exclude_id=twin.id)
    assert warnings == []
