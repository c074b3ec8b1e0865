"""The bulk path applies the registry's rules exactly as the form does.

An upload checks its rows column by column, each distinct value once, and compares names
with cheap bounds before the full matcher; these tests hold both to the one-row rules."""
import random
from datetime import date
from difflib import SequenceMatcher

from portal.locations.services import Scope
from portal.registry.models import CustomField
from portal.registry.validation import PersonRules, clean_individual, fold, similar_names

NAMES = ["Amina", " amina ", "Zoë", "Ngúnì", "O'Brien", "Mary  Ann", "", "x" * 81, "Chikondi",
         "Chikondy", "Banda", "Bandah"]
SEXES = ["F", "m", "Female", "w", "", "?", "MALE"]
DATES = ["1990-05-17", "17/05/1990", "05/17/1990", "03/04/1990", "2999-01-01", "1899-12-31",
         "31/02/1990", "", "yesterday"]
IDS = ["", "AB 123", "ab-12/3", "12.3", "x" * 41, "ID1"]
PHONES = ["", "+265 991 234 567", "(099) 123-4567", "12345", "+12345678901234567", "phone"]


def _custom_fields(db_session):
    fields = [CustomField(name="children", label="Children", type="integer", required=True),
              CustomField(name="income", label="Income", type="decimal"),
              CustomField(name="disabled", label="Disabled", type="boolean"),
              CustomField(name="tribe", label="Tribe", type="choice", choices=["Chewa", "Yao"]),
              CustomField(name="code", label="Code", type="text", pattern=r"[A-Z]{2}\d")]
    for i, f in enumerate(fields):
        f.active, f.position, f.unique = True, i, False
        f.required = bool(f.required)
    db_session.add_all(fields)
    db_session.flush()
    return fields


def _rows(country, count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    villages = [country[c].code for c in ("NV1", "NV2", "SV1", "SD")] + ["NOPE", ""]
    return [{
        "first_name": rng.choice(NAMES), "middle_name": rng.choice(NAMES + [None]),
        "last_name": rng.choice(NAMES), "sex": rng.choice(SEXES), "birth_date": rng.choice(DATES),
        "national_id": rng.choice(IDS), "national_id_type": rng.choice(["", "passport", "card"]),
        "phone": rng.choice(PHONES), "location": rng.choice(villages),
        "children": rng.choice(["2", "", "two", "1.5"]), "income": rng.choice(["", "12.5", "lots"]),
        "disabled": rng.choice(["yes", "N", "maybe", ""]), "tribe": rng.choice(["chewa", "Yao", "Zulu", ""]),
        "code": rng.choice(["AB1", "ab1", ""]),
    } for _ in range(count)]


def test_checking_rows_column_by_column_gives_what_checking_each_row_alone_gives(db_session, country):
    fields = _custom_fields(db_session)
    scope = Scope(paths=(country["N"].path,))
    valid = {"first_name": "Amina", "last_name": "Banda", "sex": "F", "birth_date": "1990-05-17",
             "location": country["NV1"].code, "children": "2", "code": "AB1"}
    rows = _rows(country, 400, seed=3) + [valid, dict(valid, first_name="Zoë")]
    together = PersonRules(db_session, custom_fields=fields, scope=scope).clean_many(rows)
    alone = [clean_individual(db_session, row, custom_fields=fields, scope=scope, check_unique=False)
             for row in rows]
    assert together == alone
    # The corpus reaches every rule, valid and invalid.
    errors = {key for _values, found in together for key in found}
    assert {"first_name", "last_name", "sex", "birth_date", "national_id", "national_id_type",
            "phone", "location", "children", "income", "disabled", "tribe", "code"} <= errors
    assert any(not found for _values, found in together)


def test_values_that_compare_equal_but_read_differently_are_not_confused(db_session, country):
    rules = PersonRules(db_session, custom_fields=[], scope=Scope(everything=True))
    rows = [{"first_name": first, "last_name": "Banda", "sex": "F", "birth_date": date(1990, 1, 1),
             "location": country["NV1"].code} for first in (True, 1, 1.0, "1")]
    names = [values["first_name"] for values, _errors in rules.clean_many(rows)]
    assert names == ["yes", "1", "1", "1"]


def _plain_rule(a_first, a_last, b_first, b_last) -> bool:
    """The duplicate-name rule written the obvious way, to hold the fast one to it."""
    a_first, a_last, b_first, b_last = (fold(x) for x in (a_first, a_last, b_first, b_last))
    if {a_first, a_last} == {b_first, b_last}:
        return True
    if SequenceMatcher(None, f"{a_first} {a_last}", f"{b_first} {b_last}").ratio() >= 0.8:
        return True
    return a_last == b_last and a_first[:3] == b_first[:3] and bool(a_first)


def test_the_fast_name_comparison_decides_as_the_plain_rule_does():
    rng = random.Random(11)
    stems = ["chikondi", "mphatso", "thandiwe", "banda", "phiri", "mwale", "amina", "juma", "li",
             "o", "grace", "zoë", "abdul-rahman", "ngúnì", "nananananananananana", "o'neil"]

    def variant(word: str) -> str:
        letters = list(word)
        for _ in range(rng.randrange(3)):
            i = rng.randrange(len(letters) + 1)
            choice = rng.random()
            if choice < 0.4 and letters:
                letters[min(i, len(letters) - 1)] = rng.choice("aeiouykh")
            elif choice < 0.7:
                letters.insert(i, rng.choice("aeiouykh"))
            elif letters:
                del letters[min(i, len(letters) - 1)]
        return "".join(letters).title()

    pairs = []
    for _ in range(4000):
        first, last = rng.choice(stems), rng.choice(stems)
        pairs.append((first.title(), last.title(), variant(first), variant(last)))
        pairs.append((first, last, rng.choice(stems), rng.choice(stems)))
    # Right at the threshold (ratio 0.8) on characters other than letters: each counts.
    pairs.append(("'-.", "X", "'-.", "Y"))
    verdicts = [similar_names(*pair) for pair in pairs]
    assert verdicts == [_plain_rule(*pair) for pair in pairs]
    assert verdicts[-1]
    assert 0 < sum(verdicts) < len(verdicts)
