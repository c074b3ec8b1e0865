from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from portal.audit.models import AuditEntry
from portal.clock import now, today
from portal.errors import DomainError
from portal.locations.services import Scope
from portal.programs import services
from portal.programs.models import Beneficiary, BeneficiaryStatusChange
from portal.programs.services import BeneficiaryFilters, Criteria


def _status(db_session, beneficiary_id):
    return db_session.scalar(select(Beneficiary.status).where(Beneficiary.id == beneficiary_id))


def _beneficiary(db_session, program, person_id):
    return db_session.scalar(select(Beneficiary).where(
        Beneficiary.program_id == program.id, Beneficiary.individual_id == person_id))


def _enrolled(db_session, program, status="potential", **kwargs):
    someone = kwargs.pop("someone")
    services.enrol(db_session, program.id, individual_ids=[someone.id], status=status,
                   actor_id=None, scope=Scope(everything=True))
    return _beneficiary(db_session, program, someone.id)


# --- programs, institutions, schemes --------------------------------------------------------

def test_a_new_program_is_a_draft_and_a_second_program_with_the_same_code_is_refused(db_session):
    created = services.save_program(db_session, None, code="CT1", name="Cash", amount="12.5",
                                    currency="mwk")
    assert created.status == "draft" and str(created.amount) == "12.50" and created.currency == "MWK"
    with pytest.raises(DomainError, match="already used"):
        services.save_program(db_session, None, code="ct1", name="Other")


def test_codes_that_differ_only_in_capitals_saved_at_the_same_moment_are_refused_by_the_database(
        db_session, monkeypatch):
    """Both saves passed the check before either was saved: the second is refused when it
    reaches the database, whose answer the portal turns into "saved at the same moment"."""
    services.save_program(db_session, None, code="CT1", name="Cash")
    services.save_scheme(db_session, None, code="NSSP", name="National scheme")
    db_session.flush()
    monkeypatch.setattr(services, "_check_code", lambda session, model, code, current_id: code)
    for save in (lambda: services.save_program(db_session, None, code="ct1", name="Other"),
                 lambda: services.save_scheme(db_session, None, code="Nssp", name="Other")):
        with pytest.raises(IntegrityError):
            with db_session.begin_nested():
                save()
                db_session.flush()


def test_a_coverage_period_that_ends_before_it_starts_is_refused(db_session):
    with pytest.raises(DomainError, match="ends before"):
        services.save_program(db_session, None, code="X", name="X", date_from=date(2026, 5, 1),
                              date_to=date(2026, 4, 1))


def test_only_a_draft_program_can_be_activated(program, db_session):
    draft = program(status="draft")
    services.activate_program(db_session, draft)
    assert draft.status == "active"
    with pytest.raises(DomainError, match="Only a draft"):
        services.activate_program(db_session, draft)


def test_institutions_and_schemes_list_their_programs(db_session, program):
    ministry = services.save_institution(db_session, None, code="MOG", name="Ministry of Gender")
    scheme = services.save_scheme(db_session, None, code="NSSP", name="National scheme")
    linked = program(institution_id=ministry.id, scheme_id=scheme.id)
    program()
    assert services.list_programs(db_session, institution_id=ministry.id) == [linked]
    assert services.list_programs(db_session, scheme_id=scheme.id) == [linked]
    with pytest.raises(DomainError, match="already used"):
        services.save_institution(db_session, None, code="MOG", name="Again")


def test_the_cap_cannot_be_lowered_below_the_places_taken(db_session, program, person, everything):
    plan = program(max_beneficiaries=5)
    services.enrol(db_session, plan.id, individual_ids=[person().id, person().id, person().id],
                   actor_id=None, scope=everything)
    with pytest.raises(DomainError, match="3 beneficiaries already hold places"):
        services.save_program(db_session, plan, code=plan.code, name=plan.name, max_beneficiaries=2)


def test_the_kind_of_beneficiary_cannot_change_once_people_are_enrolled(db_session, program, person,
                                                                         everything):
    plan = program()
    services.enrol(db_session, plan.id, individual_ids=[person().id], actor_id=None, scope=everything)
    with pytest.raises(DomainError, match="cannot change"):
        services.save_program(db_session, plan, code=plan.code, name=plan.name,
                              beneficiary_kind="group")


# --- closing ----------------------------------------------------------------------------------

def test_closing_a_program_graduates_its_active_beneficiaries_only(db_session, program, person,
                                                                   everything):
    plan = program()
    active = [person(), person()]
    waiting = person()
    services.enrol(db_session, plan.id, individual_ids=[p.id for p in active], status="active",
                   actor_id=None, scope=everything)
    services.enrol(db_session, plan.id, individual_ids=[waiting.id], actor_id=None, scope=everything)
    assert services.close_preview(db_session, plan, scope=everything) == 2
    assert services.close_program(db_session, plan.id, scope=everything, actor_id=None) == 2
    assert plan.status == "closed" and plan.closed_at is not None
    assert {_status(db_session, _beneficiary(db_session, plan, p.id).id) for p in active} == {"graduated"}
    assert _beneficiary(db_session, plan, waiting.id).status == "potential"
    steps = db_session.scalars(select(BeneficiaryStatusChange).where(
        BeneficiaryStatusChange.to_status == "graduated")).all()
    assert len(steps) == 2 and steps[0].reason == "Program closed"


def test_closing_cannot_graduate_anyone_before_their_enrolment(db_session, program, person, everything):
    plan = program()
    services.enrol(db_session, plan.id, individual_ids=[person().id], status="active",
                   actor_id=None, scope=everything)
    with pytest.raises(DomainError, match="before the enrolment"):
        services.close_program(db_session, plan.id, scope=everything, actor_id=None,
                               effective_date=today() - timedelta(days=1))
    assert plan.status == "active"
    assert services.close_program(db_session, plan.id, scope=everything, actor_id=None,
                                  effective_date=today()) == 1

def test_only_a_user_who_sees_every_location_can_close_a_program(db_session, program, person,
                                                                 country, everything):
    plan = program()
    services.enrol(db_session, plan.id, individual_ids=[person("NV1").id, person("SV1").id],
                   status="active", actor_id=None, scope=everything)
    north = Scope(paths=(country["N"].path,))
    with pytest.raises(DomainError, match="only a user who sees all locations"):
        services.close_preview(db_session, plan, scope=north)
    with pytest.raises(DomainError, match="only a user who sees all locations"):
        services.close_program(db_session, plan.id, scope=north, actor_id=None)
    assert plan.status == "active"
    assert services.status_counts(db_session, plan, scope=everything)["active"] == 2


def test_a_closed_program_is_read_only(db_session, program, person, everything):
    plan = program()
    someone = person()
    services.enrol(db_session, plan.id, individual_ids=[someone.id], status="active",
                   actor_id=None, scope=everything)
    services.close_program(db_session, plan.id, scope=everything, actor_id=None)
    beneficiary = _beneficiary(db_session, plan, someone.id)
    for attempt in (
        lambda: services.save_program(db_session, plan, code=plan.code, name="Renamed"),
        lambda: services.enrol(db_session, plan.id, individual_ids=[person().id], actor_id=None,
                               scope=everything),
        lambda: services.enrol_by_criteria(db_session, plan.id, scope=everything,
                                           criteria=Criteria(sex="F"), actor_id=None),
        lambda: services.change_status(db_session, beneficiary.id, to_status="suspended",
                                       reason="x", actor_id=None, scope=everything),
        lambda: services.bulk_change_status(db_session, plan.id, scope=everything,
                                            filters=BeneficiaryFilters(), to_status="suspended",
                                            reason="x", actor_id=None),
        lambda: services.save_program_field(db_session, plan, None, name="x", label="X", type="text"),
        lambda: services.close_program(db_session, plan.id, scope=everything, actor_id=None),
    ):
        with pytest.raises(DomainError, match="closed"):
            attempt()


# --- enrolment --------------------------------------------------------------------------------

def test_enrolling_twice_skips_and_counts_people_already_enrolled(db_session, program, person,
                                                                  everything):
    plan = program()
    a, b = person(), person()
    assert services.enrol(db_session, plan.id, individual_ids=[a.id], actor_id=None,
                          scope=everything) == {"enrolled": 1, "skipped": 0}
    assert services.enrol(db_session, plan.id, individual_ids=[a.id, b.id], actor_id=None,
                          scope=everything) == {"enrolled": 1, "skipped": 1}
    entry = services.timeline(db_session, _beneficiary(db_session, plan, b.id))[0]
    assert (entry.from_status, entry.to_status, entry.reason) == (None, "potential", "Enrolled by hand")


def test_the_timeline_starts_with_who_enrolled_and_how(db_session, program, person, make_user):
    plan = program()
    someone = person()
    manager = make_user("program_manager")
    services.enrol_by_criteria(db_session, plan.id, scope=Scope(everything=True),
                               criteria=Criteria(sex=someone.sex), status="active",
                               actor_id=manager.id)
    beneficiary = _beneficiary(db_session, plan, someone.id)
    services.change_status(db_session, beneficiary.id, to_status="suspended", reason="Away",
                           actor_id=manager.id, scope=Scope(everything=True))
    first, second = services.timeline(db_session, beneficiary)
    assert (first.to_status, first.reason, first.actor.id) == ("active", "Enrolled by criteria",
                                                              manager.id)
    assert (second.from_status, second.to_status, second.reason) == ("active", "suspended", "Away")


def test_enrolment_beyond_max_beneficiaries_is_refused_saying_how_many_places_are_left(
        db_session, program, person, everything):
    plan = program(max_beneficiaries=3)
    services.enrol(db_session, plan.id, individual_ids=[person().id, person().id], actor_id=None,
                   scope=everything)
    with pytest.raises(DomainError, match="1 place left"):
        services.enrol(db_session, plan.id, individual_ids=[person().id, person().id],
                       actor_id=None, scope=everything)
    assert services.taken_places(db_session, plan.id) == 2


def test_graduated_beneficiaries_free_their_place(db_session, program, person, everything):
    plan = program(max_beneficiaries=1)
    first = person()
    services.enrol(db_session, plan.id, individual_ids=[first.id], status="active", actor_id=None,
                   scope=everything)
    services.change_status(db_session, _beneficiary(db_session, plan, first.id).id,
                           to_status="graduated", reason="Done", actor_id=None, scope=everything)
    assert services.enrol(db_session, plan.id, individual_ids=[person().id], actor_id=None,
                          scope=everything)["enrolled"] == 1


def test_people_outside_the_callers_locations_are_refused(db_session, program, person, country):
    plan = program()
    south = person("SV1")
    north_only = Scope(paths=(country["N"].path,))
    with pytest.raises(DomainError, match="outside your locations"):
        services.enrol(db_session, plan.id, individual_ids=[south.id], actor_id=None,
                       scope=north_only)
    assert services.taken_places(db_session, plan.id) == 0


def test_a_group_program_enrols_groups_only(db_session, program, household, person, everything):
    plan = program(beneficiary_kind="group")
    home = household(3)
    with pytest.raises(DomainError, match="groups only"):
        services.enrol(db_session, plan.id, individual_ids=[person().id], actor_id=None,
                       scope=everything)
    assert services.enrol(db_session, plan.id, group_ids=[home.id], actor_id=None,
                          scope=everything)["enrolled"] == 1


def test_program_extra_fields_are_validated_on_enrolment(db_session, program, person, everything):
    plan = program()
    services.save_program_field(db_session, plan, None, name="school", label="School", type="text",
                                required=True)
    with pytest.raises(DomainError, match="School is required"):
        services.enrol(db_session, plan.id, individual_ids=[person().id], actor_id=None,
                       scope=everything)
    someone = person()
    services.enrol(db_session, plan.id, individual_ids=[someone.id], actor_id=None,
                   scope=everything, custom={"school": "Chilumba"})
    assert _beneficiary(db_session, plan, someone.id).custom == {"school": "Chilumba"}


def test_enrolment_after_the_coverage_has_ended_is_refused_on_every_path(db_session, program,
                                                                         person, everything):
    ended = program(date_to=today() - timedelta(days=1))
    someone = person(sex="F")
    with pytest.raises(DomainError, match="coverage of .* ended on"):
        services.enrol(db_session, ended.id, individual_ids=[someone.id], actor_id=None,
                       scope=everything)
    with pytest.raises(DomainError, match="coverage of .* ended on"):
        services.enrol_by_criteria(db_session, ended.id, scope=everything,
                                   criteria=Criteria(sex="F"), actor_id=None)
    assert services.taken_places(db_session, ended.id) == 0
    last_day = program(date_to=today())
    assert services.enrol(db_session, last_day.id, individual_ids=[someone.id], actor_id=None,
                          scope=everything)["enrolled"] == 1
    offered = services.open_programs(db_session, "individual")
    assert last_day in offered and ended not in offered


# --- enrolment by criteria --------------------------------------------------------------------

def test_enrolment_by_criteria_previews_then_enrols_matching_people_and_skips_the_enrolled(
        db_session, program, person, everything, country):
    plan = program()
    older = person("NV1", sex="F", birth_date=date(1950, 1, 1))
    person("NV2", sex="F", birth_date=date(1949, 6, 1))
    person("NV1", sex="M", birth_date=date(1950, 1, 1))         # wrong sex
    person("NV1", sex="F", birth_date=date(2000, 1, 1))         # too young
    person("SV1", sex="F", birth_date=date(1950, 1, 1))         # elsewhere
    services.enrol(db_session, plan.id, individual_ids=[older.id], actor_id=None, scope=everything)
    criteria = Criteria(location_id=country["N"].id, sex="F", age_min=65)
    preview = services.preview_criteria(db_session, plan, scope=everything, criteria=criteria)
    assert (preview["matching"], preview["new"], preview["already"]) == (2, 1, 1)
    assert len(preview["sample"]) == 1
    result = services.enrol_by_criteria(db_session, plan.id, scope=everything, criteria=criteria,
                                        status="active", actor_id=None)
    assert result == {"enrolled": 1, "skipped": 1}
    assert services.status_counts(db_session, plan, scope=everything)["active"] == 1


def test_age_bounds_are_inclusive(db_session, program, person, everything):
    plan = program()
    on = today()
    exactly_60 = person(birth_date=on.replace(year=on.year - 60) if not (on.month == 2 and on.day == 29)
                        else date(on.year - 60, 2, 28))
    person(birth_date=exactly_60.birth_date + timedelta(days=1))  # 59 until tomorrow
    preview = services.preview_criteria(db_session, plan, scope=everything,
                                        criteria=Criteria(age_min=60, age_max=60))
    assert preview["matching"] == 1 and preview["sample"][0].id == exactly_60.id


def test_criteria_with_age_from_above_age_to_are_refused_instead_of_matching_nobody(
        db_session, program, person, everything):
    plan = program()
    person(birth_date=date(1950, 1, 1))
    upside_down = Criteria(age_min=90, age_max=10)
    with pytest.raises(DomainError, match=r"Age to \(10\) is less than age from \(90\)") as refused:
        services.preview_criteria(db_session, plan, scope=everything, criteria=upside_down)
    assert refused.value.field == "age_max"
    with pytest.raises(DomainError, match="swap them"):
        services.enrol_by_criteria(db_session, plan.id, scope=everything, criteria=upside_down,
                                   actor_id=None)
    assert services.taken_places(db_session, plan.id) == 0


def test_criteria_with_household_size_from_above_to_are_refused_instead_of_matching_nobody(
        db_session, program, person, everything):
    plan = program()
    person()
    with pytest.raises(DomainError, match=r"Household size to \(2\) is less than household size "
                                          r"from \(5\), so nobody could match") as refused:
        services.preview_criteria(db_session, plan, scope=everything,
                                  criteria=Criteria(household_min=5, household_max=2))
    assert refused.value.field == "hh_max"


def test_enrolment_by_criteria_refuses_more_than_the_places_left(db_session, program, person,
                                                                 everything):
    plan = program(max_beneficiaries=2)
    for _ in range(3):
        person(sex="F")
    with pytest.raises(DomainError, match="3 more cannot be enrolled, 2 places left"):
        services.enrol_by_criteria(db_session, plan.id, scope=everything,
                                   criteria=Criteria(sex="F"), actor_id=None)
    assert services.taken_places(db_session, plan.id) == 0


def test_enrolment_by_criteria_stays_within_the_callers_scope(db_session, program, person, country):
    plan = program()
    person("NV1", sex="F")
    person("SV1", sex="F")
    north = Scope(paths=(country["N"].path,))
    result = services.enrol_by_criteria(db_session, plan.id, scope=north,
                                        criteria=Criteria(sex="F"), actor_id=None)
    assert result["enrolled"] == 1
    with pytest.raises(DomainError, match="outside yours"):
        services.preview_criteria(db_session, plan, scope=north,
                                  criteria=Criteria(location_id=country["S"].id))
    north_ward = Scope(paths=(country["NW"].path,))  # the region above is allowed, scope still holds
    assert services.preview_criteria(db_session, plan, scope=north_ward,
                                     criteria=Criteria(location_id=country["N"].id))["matching"] == 1


def test_a_household_matches_criteria_only_on_members_the_user_may_see(
        db_session, program, household, person, country, everything):
    elder_elsewhere = person("SV1", sex="F", birth_date=date(1940, 1, 1))
    home = household(2, "NV1", members=[elder_elsewhere])  # the head is born in 1980
    homes = program(beneficiary_kind="group")
    elders = Criteria(age_min=80)
    assert services.preview_criteria(db_session, homes, scope=everything, criteria=elders)["matching"] == 1
    north = Scope(paths=(country["N"].path,))
    assert services.preview_criteria(db_session, homes, scope=north, criteria=elders)["matching"] == 0
    assert services.preview_criteria(db_session, homes, scope=north,
                                     criteria=Criteria(age_max=60))["sample"][0].id == home.id


def test_household_size_selects_people_and_households(db_session, program, household, person,
                                                      everything):
    big, small = household(5), household(2)
    person()  # no household
    people = program()
    homes = program(beneficiary_kind="group")
    preview = services.preview_criteria(db_session, people, scope=everything,
                                        criteria=Criteria(household_min=4))
    assert preview["matching"] == 5
    preview = services.preview_criteria(db_session, homes, scope=everything,
                                        criteria=Criteria(household_max=2))
    assert preview["matching"] == 1 and preview["sample"][0].id == small.id
    assert big.id != small.id


def test_a_group_program_selects_households_with_any_member_matching(db_session, program, household,
                                                                     person, everything):
    elder = person(birth_date=date(1940, 1, 1))
    with_elder = household(members=[elder])
    household(2)
    homes = program(beneficiary_kind="group")
    result = services.enrol_by_criteria(db_session, homes.id, scope=everything,
                                        criteria=Criteria(age_min=80), actor_id=None)
    assert result["enrolled"] == 1
    assert db_session.scalar(select(Beneficiary.group_id).where(
        Beneficiary.program_id == homes.id)) == with_elder.id


@pytest.mark.parametrize("op, value, expected", [
    ("=", "3", 1), ("!=", "3", 3), ("<", "5", 2), ("<=", "5", 3), (">", "3", 1), (">=", "3", 2),
    ("empty", "", 1),
])
def test_custom_field_criteria_compare_numbers(db_session, program, person, everything, op, value,
                                               expected):
    from portal.registry.models import CustomField

    db_session.add(CustomField(name="rooms", label="Rooms", type="integer", choices=[]))
    db_session.flush()
    for rooms in (1, 3, 5, None):
        person(custom={} if rooms is None else {"rooms": rooms})
    preview = services.preview_criteria(db_session, program(), scope=everything,
                                        criteria=Criteria(custom=[("rooms", op, value)]))
    assert preview["matching"] == expected


def test_custom_field_criteria_contains_text_and_refuse_unknown_fields(db_session, program, person,
                                                                       everything):
    from portal.registry.models import CustomField

    db_session.add(CustomField(name="roof", label="Roof", type="text", choices=[]))
    db_session.flush()
    person(custom={"roof": "Iron sheets"})
    person(custom={"roof": "Thatch"})
    plan = program()
    preview = services.preview_criteria(db_session, plan, scope=everything,
                                        criteria=Criteria(custom=[("roof", "contains", "iron")]))
    assert preview["matching"] == 1
    with pytest.raises(DomainError, match="no custom field"):
        services.preview_criteria(db_session, plan, scope=everything,
                                  criteria=Criteria(custom=[("walls", "=", "x")]))
    with pytest.raises(DomainError, match="Rooms|whole number|Roof"):
        db_session.add(CustomField(name="rooms", label="Rooms", type="integer", choices=[]))
        db_session.flush()
        services.preview_criteria(db_session, plan, scope=everything,
                                  criteria=Criteria(custom=[("rooms", ">", "many")]))


# --- status changes ---------------------------------------------------------------------------

ALLOWED = [("potential", "active"), ("active", "suspended"), ("suspended", "active"),
           ("active", "graduated"), ("suspended", "graduated"), ("potential", "removed")]
STATUSES = ["potential", "active", "suspended", "graduated"]
REFUSED = [(a, b) for a in STATUSES for b in STATUSES + ["removed"]
           if (a, b) not in ALLOWED]


def _in_status(db_session, program, person, status):
    plan = program()
    someone = person()
    path = {"potential": [], "active": ["active"], "suspended": ["active", "suspended"],
            "graduated": ["active", "graduated"]}[status]
    services.enrol(db_session, plan.id, individual_ids=[someone.id], actor_id=None,
                   scope=Scope(everything=True))
    beneficiary = _beneficiary(db_session, plan, someone.id)
    for step in path:
        services.change_status(db_session, beneficiary.id, to_status=step, reason="setup",
                               actor_id=None, scope=Scope(everything=True))
    return plan, beneficiary


@pytest.mark.parametrize("from_status, to_status", ALLOWED)
def test_an_allowed_status_change_is_recorded_with_reason_date_and_actor(
        db_session, program, person, make_user, from_status, to_status):
    actor = make_user("program_manager")
    plan, beneficiary = _in_status(db_session, program, person, from_status)
    when = today()
    result = services.change_status(db_session, beneficiary.id, to_status=to_status,
                                    reason="Checked at home visit", effective_date=when,
                                    actor_id=actor.id, scope=Scope(everything=True))
    if to_status == "removed":
        assert result is None
        assert _beneficiary(db_session, plan, beneficiary.individual_id) is None
        return
    assert _status(db_session, beneficiary.id) == to_status
    last = services.timeline(db_session, beneficiary)[-1]
    assert (last.from_status, last.to_status, last.reason, last.effective_date, last.actor_id) == (
        from_status, to_status, "Checked at home visit", when, actor.id)


@pytest.mark.parametrize("from_status, to_status", REFUSED)
def test_a_status_change_that_is_not_allowed_is_refused(db_session, program, person, from_status,
                                                        to_status):
    _plan, beneficiary = _in_status(db_session, program, person, from_status)
    with pytest.raises(DomainError, match="cannot become"):
        services.change_status(db_session, beneficiary.id, to_status=to_status, reason="x",
                               actor_id=None, scope=Scope(everything=True))
    assert _status(db_session, beneficiary.id) == from_status


def test_a_status_change_needs_a_reason(db_session, program, person):
    _plan, beneficiary = _in_status(db_session, program, person, "potential")
    with pytest.raises(DomainError, match="reason"):
        services.change_status(db_session, beneficiary.id, to_status="active", reason=" ",
                               actor_id=None, scope=Scope(everything=True))


def test_a_status_change_one_by_one_or_in_bulk_cannot_take_effect_before_the_enrolment(
        db_session, program, person, everything):
    plan, beneficiary = _in_status(db_session, program, person, "potential")
    before = beneficiary.enrolled_at.date() - timedelta(days=1)
    with pytest.raises(DomainError, match="before the enrolment"):
        services.change_status(db_session, beneficiary.id, to_status="active", reason="x",
                               effective_date=before, actor_id=None, scope=everything)
    with pytest.raises(DomainError, match="before the enrolment"):
        services.bulk_change_status(db_session, plan.id, scope=everything,
                                    filters=BeneficiaryFilters(), to_status="active", reason="x",
                                    effective_date=before, actor_id=None)
    assert _status(db_session, beneficiary.id) == "potential"


def _refused_one_by_one_in_bulk_and_on_closing(db_session, plan, beneficiary, *, to_status,
                                               effective_date, match):
    everything = Scope(everything=True)
    with pytest.raises(DomainError, match=match):
        services.change_status(db_session, beneficiary.id, to_status=to_status, reason="x",
                               effective_date=effective_date, actor_id=None, scope=everything)
    with pytest.raises(DomainError, match=match):
        services.bulk_change_status(db_session, plan.id, scope=everything,
                                    filters=BeneficiaryFilters(), to_status=to_status, reason="x",
                                    effective_date=effective_date, actor_id=None)
    with pytest.raises(DomainError, match=match):
        services.close_program(db_session, plan.id, scope=everything, actor_id=None,
                               effective_date=effective_date)


def test_a_status_change_cannot_take_effect_after_today_one_by_one_in_bulk_or_on_closing(
        db_session, program, person):
    plan, beneficiary = _in_status(db_session, program, person, "potential")
    _refused_one_by_one_in_bulk_and_on_closing(
        db_session, plan, beneficiary, to_status="active", effective_date=today() + timedelta(days=1),
        match="cannot be after today")
    assert _status(db_session, beneficiary.id) == "potential" and plan.status == "active"


def test_a_status_change_cannot_take_effect_before_the_change_it_follows(db_session, program, person,
                                                                        everything):
    plan, beneficiary = _in_status(db_session, program, person, "potential")
    beneficiary.enrolled_at = datetime.combine(today() - timedelta(days=60), datetime.min.time())
    db_session.flush()
    services.change_status(db_session, beneficiary.id, to_status="active", reason="eligible",
                           effective_date=today() - timedelta(days=30), actor_id=None, scope=everything)
    _refused_one_by_one_in_bulk_and_on_closing(
        db_session, plan, beneficiary, to_status="suspended", effective_date=today() - timedelta(days=40),
        match=r"before the status change it follows \(" + (today() - timedelta(days=30)).isoformat())
    assert _status(db_session, beneficiary.id) == "active"
    services.change_status(db_session, beneficiary.id, to_status="suspended", reason="x",
                           effective_date=today() - timedelta(days=30), actor_id=None, scope=everything)
    assert _status(db_session, beneficiary.id) == "suspended"


def test_a_beneficiary_outside_the_callers_locations_cannot_be_changed(db_session, program, person,
                                                                        country):
    _plan, beneficiary = _in_status(db_session, program, person, "potential")  # lives in NV1
    south = Scope(paths=(country["S"].path,))
    with pytest.raises(DomainError, match="outside your locations"):
        services.change_status(db_session, beneficiary.id, to_status="active", reason="x",
                               actor_id=None, scope=south)


def test_activation_over_a_cap_that_was_lowered_behind_its_back_is_refused(db_session, program,
                                                                          person):
    plan, beneficiary = _in_status(db_session, program, person, "potential")
    services.enrol(db_session, plan.id, individual_ids=[person().id], actor_id=None,
                   scope=Scope(everything=True))
    plan.max_beneficiaries = 1  # as an old row from before the cap rule might be
    db_session.flush()
    with pytest.raises(DomainError, match="0 places left"):
        services.change_status(db_session, beneficiary.id, to_status="active", reason="x",
                               actor_id=None, scope=Scope(everything=True))


def test_bulk_status_change_previews_and_changes_only_allowed_beneficiaries(db_session, program,
                                                                           person, everything):
    plan = program()
    potential = [person(), person()]
    active = [person(), person(), person()]
    services.enrol(db_session, plan.id, individual_ids=[p.id for p in potential], actor_id=None,
                   scope=everything)
    services.enrol(db_session, plan.id, individual_ids=[p.id for p in active], status="active",
                   actor_id=None, scope=everything)
    preview = services.bulk_status_preview(db_session, plan, scope=everything,
                                           filters=BeneficiaryFilters(), to_status="suspended")
    assert {k: preview[k] for k in ("change", "not_allowed", "total")} == {
        "change": 3, "not_allowed": 2, "total": 5}
    changing = db_session.scalars(select(Beneficiary.id).where(Beneficiary.status == "active")).all()
    assert preview["mark"] == f"3-{sum(changing)}"  # who would change: their number, their ids' sum
    result = services.bulk_change_status(db_session, plan.id, scope=everything,
                                         filters=BeneficiaryFilters(), to_status="suspended",
                                         reason="Missed verification", actor_id=None)
    assert result == {"changed": 3, "not_allowed": 2}
    assert services.status_counts(db_session, plan, scope=everything) == {
        "potential": 2, "active": 0, "suspended": 3, "graduated": 0}
    assert db_session.scalar(select(func.count()).select_from(BeneficiaryStatusChange).where(
        BeneficiaryStatusChange.reason == "Missed verification")) == 3


def test_bulk_removal_deletes_potential_beneficiaries_within_scope_only(db_session, program, person,
                                                                        country, everything):
    plan = program()
    services.enrol(db_session, plan.id, individual_ids=[person("NV1").id, person("SV1").id],
                   actor_id=None, scope=everything)
    north = Scope(paths=(country["N"].path,))
    result = services.bulk_change_status(db_session, plan.id, scope=north,
                                         filters=BeneficiaryFilters(), to_status="removed",
                                         reason="Duplicate", actor_id=None)
    assert result == {"changed": 1, "not_allowed": 0}
    assert services.taken_places(db_session, plan.id) == 1


def test_bulk_removal_records_who_was_removed_and_their_status(db_session, program, person,
                                                               household, make_user, everything):
    actor = make_user("program_manager")
    people = [person(), person()]
    plan = program()
    services.enrol(db_session, plan.id, individual_ids=[p.id for p in people], actor_id=None,
                   scope=everything)
    removed = {_beneficiary(db_session, plan, p.id).id: p.id for p in people}
    homes = program(beneficiary_kind="group")
    home = household(2)
    services.enrol(db_session, homes.id, group_ids=[home.id], actor_id=None, scope=everything)
    for target in (plan, homes):
        services.bulk_change_status(db_session, target.id, scope=everything,
                                    filters=BeneficiaryFilters(), to_status="removed",
                                    reason="Duplicate", actor_id=actor.id)
    entries = db_session.scalars(select(AuditEntry).where(
        AuditEntry.entity_type == "beneficiary", AuditEntry.action == "remove")).all()
    by_beneficiary = {int(e.entity_id): e for e in entries}
    assert len(entries) == 3
    for beneficiary_id, individual_id in removed.items():
        changes = by_beneficiary[beneficiary_id].changes
        assert (changes["program_id"], changes["individual_id"], changes["status"],
                changes["reason"]) == (plan.id, individual_id, "potential", "Duplicate")
        assert by_beneficiary[beneficiary_id].actor_id == actor.id
    [group_entry] = [e for e in entries if int(e.entity_id) not in removed]
    assert (group_entry.changes["group_id"], group_entry.changes["status"]) == (home.id,
                                                                                "potential")


# --- lists ------------------------------------------------------------------------------------

def test_lists_counts_and_regions_stay_within_scope(db_session, program, person, country, everything):
    plan = program()
    services.enrol(db_session, plan.id, individual_ids=[person("NV1").id, person("NV2").id,
                                                       person("SV1").id],
                   actor_id=None, scope=everything)
    north = Scope(paths=(country["N"].path,))
    rows, more = services.search_beneficiaries(db_session, plan, scope=north,
                                               filters=BeneficiaryFilters())
    assert len(rows) == 2 and not more
    assert services.status_counts(db_session, plan, scope=north)["potential"] == 2
    assert services.region_counts(db_session, plan, scope=everything) == [("N region", 2),
                                                                         ("S region", 1)]
    assert services.region_counts(db_session, plan, scope=north) == [("N region", 2)]
    header, rows = services.export_rows(db_session, plan, scope=north,
                                        filters=BeneficiaryFilters(), show_pii=False)
    rows = list(rows)
    assert len(rows) == 2 and all(r[header.index("National ID")].startswith("•") for r in rows)


def test_the_beneficiary_list_filtered_by_a_place_shows_the_people_living_in_it(
        db_session, program, person, country, everything):
    plan = program()
    north_one, north_two, south = person("NV1"), person("NV2"), person("SV1")
    gone = person("NV1")
    services.enrol(db_session, plan.id, individual_ids=[north_one.id, north_two.id, south.id, gone.id],
                   actor_id=None, scope=everything)
    gone.deleted_at = datetime(2026, 1, 1)  # deleted since enrolment: still on the list
    db_session.flush()

    def listed(place):
        rows, _more = services.search_beneficiaries(
            db_session, plan, scope=everything, filters=BeneficiaryFilters(location_id=country[place].id))
        return {s.id for _b, s in rows}

    assert listed("NV1") == {north_one.id, gone.id}
    assert listed("ND") == {north_one.id, north_two.id, gone.id}  # a district: its villages
    assert listed("SV2") == set()


def test_a_field_officer_lists_only_the_households_and_people_of_their_area(
        db_session, program, person, household, country, everything):
    homes, people = program(beneficiary_kind="group"), program()
    north_home, south_home = household(village="NV2"), household(village="SV1")
    services.enrol(db_session, homes.id, group_ids=[north_home.id, south_home.id], actor_id=None,
                   scope=everything)
    north_one, south_one = person("NV1"), person("SV2")
    services.enrol(db_session, people.id, individual_ids=[north_one.id, south_one.id],
                   actor_id=None, scope=everything)
    north = Scope(paths=(country["N"].path,))
    for plan, expected in ((homes, north_home.id), (people, north_one.id)):
        rows, _more = services.search_beneficiaries(db_session, plan, scope=north,
                                                    filters=BeneficiaryFilters())
        assert [s.id for _b, s in rows] == [expected]
        assert services.status_counts(db_session, plan, scope=north)["potential"] == 1


def test_beneficiary_search_finds_by_name_and_national_id(db_session, program, person, everything):
    plan = program()
    mercy = person(first_name="Mercy", last_name="Tembo", national_id="NID-42")
    services.enrol(db_session, plan.id, individual_ids=[mercy.id, person().id], actor_id=None,
                   scope=everything)
    for text in ("tembo", "mercy", "NID-42"):
        rows, _ = services.search_beneficiaries(db_session, plan, scope=everything,
                                                filters=BeneficiaryFilters(text=text))
        assert [s.id for _b, s in rows] == [mercy.id]


def test_the_demo_has_programs_with_beneficiaries_in_several_statuses(db_session):
    import random

    from portal.demo import build_locations
    from portal.programs import demo
    from portal.programs.models import Program
    from portal.registry import demo as registry_demo

    rng = random.Random(1)
    villages = build_locations(db_session, rng)
    registry_demo.build(db_session, rng, villages)
    assert demo.build(db_session, rng, villages)["programs"] == 3
    pension = db_session.scalar(select(Program).where(Program.code == "OAP"))
    counts = services.status_counts(db_session, pension, scope=Scope(everything=True))
    assert all(counts[s] for s in ("potential", "active", "suspended", "graduated"))


def test_the_beneficiary_list_filters_by_age_and_sex_of_the_person_or_recipient(
        db_session, program, person, household, everything):
    plan = program()
    old_woman = person(sex="F", birth_date=date(1940, 1, 1))
    person_ids = [old_woman.id, person(sex="M", birth_date=date(1940, 1, 1)).id,
                  person(sex="F", birth_date=date(2000, 1, 1)).id]
    services.enrol(db_session, plan.id, individual_ids=person_ids, actor_id=None, scope=everything)
    rows, _ = services.search_beneficiaries(db_session, plan, scope=everything,
                                            filters=BeneficiaryFilters(sex="F", age_min=70))
    assert [s.id for _b, s in rows] == [old_woman.id]
    homes = program(beneficiary_kind="group")
    elder_home = household(head=person(birth_date=date(1940, 1, 1)))
    services.enrol(db_session, homes.id, group_ids=[elder_home.id, household().id], actor_id=None,
                   scope=everything)
    counts = services.status_counts(db_session, homes, scope=everything,
                                    filters=BeneficiaryFilters(age_min=70))
    assert counts["potential"] == 1


def test_candidates_to_enrol_are_found_within_scope_and_marked_when_enrolled(
        db_session, program, person, household, country, everything):
    plan = program()
    mercy = person("NV1", first_name="Mercy", last_name="Tembo", national_id="NID-77")
    person("SV1", first_name="Mercy", last_name="Tembo")
    services.enrol(db_session, plan.id, individual_ids=[mercy.id], actor_id=None, scope=everything)
    north = Scope(paths=(country["N"].path,))
    assert services.find_candidates(db_session, plan, scope=north, text="tembo") == [(mercy, True)]
    assert services.find_candidates(db_session, plan, scope=north, text="NID-77") == [(mercy, True)]
    homes = program(beneficiary_kind="group")
    home = household(2)
    assert services.find_candidates(db_session, homes, scope=everything, text=home.code) == [(home, False)]


# --- found in review ------------------------------------------------------------------------

def test_saving_a_beneficiarys_program_fields_keeps_the_values_of_deactivated_fields(
        db_session, program, person, everything):
    plan = program()
    services.save_program_field(db_session, plan, None, name="school", label="School", type="text")
    grade = services.save_program_field(db_session, plan, None, name="grade", label="Grade",
                                        type="integer")
    someone = person()
    services.enrol(db_session, plan.id, individual_ids=[someone.id], actor_id=None,
                   scope=everything, custom={"school": "Chilumba", "grade": "4"})
    services.save_program_field(db_session, plan, grade, name="grade", label="Grade",
                                type="integer", active=False)
    beneficiary = _beneficiary(db_session, plan, someone.id)
    services.update_beneficiary_custom(db_session, beneficiary.id, {"school": "Karonga"},
                                       scope=everything, actor_id=None)
    assert _beneficiary(db_session, plan, someone.id).custom == {"school": "Karonga", "grade": 4}


def test_a_program_field_cannot_be_renamed_away_from_the_values_stored_under_its_name(
        db_session, program, person, everything):
    plan = program()
    school = services.save_program_field(db_session, plan, None, name="school", label="School",
                                         type="text")
    someone = person()
    services.enrol(db_session, plan.id, individual_ids=[someone.id], actor_id=None,
                   scope=everything, custom={"school": "Chilumba"})
    with pytest.raises(DomainError, match="name of a field cannot change"):
        services.save_program_field(db_session, plan, school, name="college", label="School",
                                    type="text")


def test_filtering_households_by_recipient_age_or_sex_ignores_payees_outside_the_users_area(
        db_session, program, person, household, country, everything):
    """A count that changes with the age filter would tell an officer the age of a payee the
    list does not even name."""
    homes = program(beneficiary_kind="group")
    payee = person("SV1", sex="F", birth_date=date(1940, 1, 1))
    northern_home = household(3, "NV1", head=payee)
    services.enrol(db_session, homes.id, group_ids=[northern_home.id], actor_id=None,
                   scope=everything)
    north = Scope(paths=(country["N"].path,))
    for filters in (BeneficiaryFilters(age_min=80), BeneficiaryFilters(sex="F")):
        rows, _ = services.search_beneficiaries(db_session, homes, scope=north, filters=filters)
        assert rows == []
        assert sum(services.status_counts(db_session, homes, scope=north,
                                          filters=filters).values()) == 0
        assert services.bulk_status_preview(db_session, homes, scope=north, filters=filters,
                                            to_status="active")["total"] == 0
    rows, _ = services.search_beneficiaries(db_session, homes, scope=everything,
                                            filters=BeneficiaryFilters(age_min=80, sex="F"))
    assert [s.id for _b, s in rows] == [northern_home.id]


def test_household_size_criteria_count_only_members_who_are_not_deleted(db_session, program,
                                                                        household, everything):
    home = household(3)
    gone = next(m for m in home.members if m.role != "head").individual
    gone.deleted_at = now()  # deleted: hidden from the registry, no longer one of the household
    db_session.flush()
    homes = program(beneficiary_kind="group")
    people = program()
    assert services.preview_criteria(db_session, homes, scope=everything,
                                     criteria=Criteria(household_min=3))["matching"] == 0
    assert services.preview_criteria(db_session, people, scope=everything,
                                     criteria=Criteria(household_min=3))["matching"] == 0
    assert services.preview_criteria(db_session, homes, scope=everything,
                                     criteria=Criteria(household_min=2, household_max=2))["matching"] == 1
    assert services.preview_criteria(db_session, people, scope=everything,
                                     criteria=Criteria(household_min=2, household_max=2))["matching"] == 2
