from datetime import date

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from portal.errors import DomainError
from portal.locations.services import Scope
from portal.programs.models import Beneficiary, Program
from portal.registry import services
from portal.registry.models import GroupMember

EVERYTHING = Scope(everything=True)


def names(result):
    return [p.last_name + " " + p.first_name for p in result.rows]


def search(db_session, scope=EVERYTHING, **filters):
    return services.search_individuals(db_session, scope=scope, filters=filters)


@pytest.fixture
def people(country, make_individual):
    return {
        "banda": make_individual("Chikondi", "Banda", location=country["NV1"], sex="F",
                                 birth_date=date(1990, 1, 1), national_id="MW1000001"),
        "bandawe": make_individual("Kondwani", "Bandawe", location=country["NV2"], sex="M",
                                   birth_date=date(2015, 6, 1), national_id="MW1000002"),
        "phiri": make_individual("Grace", "Phiri", location=country["SV1"], sex="F",
                                 birth_date=date(1950, 3, 3), national_id="ZM2000001"),
    }


def test_a_name_prefix_finds_surnames_in_order_ignoring_case_and_accents(db_session, people):
    assert names(search(db_session, q="BAND")) == ["Banda Chikondi", "Bandawe Kondwani"]
    assert names(search(db_session, q="bánda chi")) == ["Banda Chikondi"]
    assert names(search(db_session, q="Phiri, Grace")) == ["Phiri Grace"]


def test_a_national_id_prefix_finds_the_person(db_session, people):
    assert names(search(db_session, q="mw100000 2")) == ["Bandawe Kondwani"]
    assert names(search(db_session, q="ZM2")) == ["Phiri Grace"]


def test_a_location_filter_includes_everything_below_it(db_session, country, people):
    assert names(search(db_session, location="N")) == ["Banda Chikondi", "Bandawe Kondwani"]
    assert names(search(db_session, location="NV2")) == ["Bandawe Kondwani"]
    assert names(search(db_session, location="nowhere")) == []


def test_sex_and_age_filters_combine(db_session, people):
    assert names(search(db_session, sex="F", age_min="18")) == ["Banda Chikondi", "Phiri Grace"]
    assert names(search(db_session, age_max="17")) == ["Bandawe Kondwani"]
    assert names(search(db_session, born_from="1940-01-01", born_to="1960-01-01")) == ["Phiri Grace"]


def test_a_field_officer_finds_only_people_in_their_locations_and_counts_only_them(db_session, country, people):
    south = Scope(paths=(country["S"].path,))
    result = search(db_session, scope=south)
    assert names(result) == ["Phiri Grace"] and result.count == 1
    assert names(search(db_session, scope=south, q="banda")) == []
    assert services.get_individual(db_session, people["banda"].id, scope=south) is None


def test_group_and_household_filters(db_session, people, make_household, make_group):
    household = make_household(head=people["banda"], members=[people["bandawe"]])
    make_group("cooperative", members=[people["phiri"]], code="COOP1")
    assert names(search(db_session, household="yes")) == ["Banda Chikondi", "Bandawe Kondwani"]
    assert names(search(db_session, household="no")) == ["Phiri Grace"]
    assert names(search(db_session, group=household.code)) == ["Banda Chikondi", "Bandawe Kondwani"]
    assert names(search(db_session, group="coop1")) == ["Phiri Grace"]


def test_a_group_outside_the_users_area_names_none_of_their_own_people_by_its_code(
        db_session, country, people, make_group):
    make_group("cooperative", members=[people["banda"]], code="COOP-SOUTH", location=country["SV1"])
    north = Scope(paths=(country["N"].path,))
    assert names(search(db_session, scope=north, group="COOP-SOUTH")) == []
    assert names(search(db_session, group="COOP-SOUTH")) == ["Banda Chikondi"]


def test_program_and_beneficiary_status_filters_include_households_enrolled_as_a_group(
        db_session, people, make_household):
    household = make_household(head=people["bandawe"], members=[])
    solo = Program(code="P1", name="Old age grant", beneficiary_kind="individual", status="active")
    family = Program(code="P2", name="Child grant", beneficiary_kind="group", status="active")
    db_session.add_all([solo, family])
    db_session.flush()
    db_session.add_all([Beneficiary(program_id=solo.id, individual_id=people["phiri"].id, status="active"),
                        Beneficiary(program_id=family.id, group_id=household.id, status="suspended")])
    db_session.flush()
    assert names(search(db_session, program=str(solo.id))) == ["Phiri Grace"]
    assert names(search(db_session, program=str(family.id))) == ["Bandawe Kondwani"]
    assert names(search(db_session, status="suspended")) == ["Bandawe Kondwani"]
    assert names(search(db_session, program=str(solo.id), status="suspended")) == []


def test_deleted_people_disappear_from_search_and_come_back_when_restored(db_session, people):
    services.delete_individual(db_session, people["banda"], scope=EVERYTHING, actor_id=None)
    assert names(search(db_session, q="banda")) == ["Bandawe Kondwani"]
    services.restore_individual(db_session, people["banda"], show_pii=True, actor_id=None)
    assert names(search(db_session, q="banda")) == ["Banda Chikondi", "Bandawe Kondwani"]


def test_counts_are_capped_so_they_stay_cheap(db_session, people):
    result = services.search_individuals(db_session, scope=EVERYTHING, filters={}, per_page=1, count_cap=2)
    assert result.capped and result.count_label == "2+"
    result = services.search_individuals(db_session, scope=EVERYTHING, filters={"q": "banda"}, per_page=1,
                                         count_cap=2)
    assert not result.capped and result.count == 2 and result.has_more


def test_a_result_row_names_the_persons_village_and_household(db_session, people, make_household):
    household = make_household(head=people["banda"], members=[], code="HH-ROW")
    rows = {p.id: p for p in search(db_session, q="banda").rows}
    banda, bandawe = rows[people["banda"].id], rows[people["bandawe"].id]
    assert (banda.village, banda.household_id, banda.household_code) == (
        people["banda"].location.name, household.id, "HH-ROW")
    assert (bandawe.village, bandawe.household_id, bandawe.household_code) == (
        people["bandawe"].location.name, None, None)
    assert (banda.national_id, banda.birth_date, banda.sex) == ("MW1000001", date(1990, 1, 1), "F")


def test_a_page_past_the_last_keeps_the_count(db_session, people):
    result = services.search_individuals(db_session, scope=EVERYTHING, filters={"q": "banda"}, page=3, per_page=1)
    assert result.rows == [] and result.count == 2 and not result.has_more


def test_sorting_is_whitelisted(db_session, people):
    assert names(services.search_individuals(db_session, scope=EVERYTHING, filters={}, sort="-birth_date"))[0] \
        == "Bandawe Kondwani"
    assert names(services.search_individuals(db_session, scope=EVERYTHING, filters={},
                                             sort="password; drop table"))[0] == "Banda Chikondi"


def test_a_page_of_results_takes_the_same_number_of_queries_whatever_its_size(
        db_session, country, make_individual, make_household, count_queries):
    def measure():
        with count_queries() as n:
            result = services.search_individuals(db_session, scope=Scope(paths=(country["N"].path,)),
                                                 filters={"q": "m"}, per_page=50)
            for p in result.rows:
                _ = p.village, p.household_code
        return n(), len(result.rows)

    for i in range(3):
        make_household(head=make_individual("A", f"Moyo{i}", location=country["NV1"]), size=2)
    small = measure()
    for i in range(10):
        make_household(head=make_individual("A", f"Mbewe{i}", location=country["NV2"]), size=2)
    large = measure()
    assert large[1] > small[1]
    assert large[0] == small[0]


def test_an_edit_with_a_stale_version_is_refused_and_nothing_is_overwritten(db_session, country, people):
    person = people["banda"]
    opened_at = person.version
    raw = {"first_name": "Chikondi", "last_name": "Banda", "sex": "F", "birth_date": "1990-01-01",
           "national_id": "MW1000001", "location": "NV1"}
    services.update_individual(db_session, person, {**raw, "phone": "0991111111"}, scope=EVERYTHING,
                               expected_version=opened_at, actor_id=None)
    assert person.version == opened_at + 1
    with pytest.raises(services.ConflictError, match="changed by someone else"):
        services.update_individual(db_session, person, {**raw, "phone": "0882222222"}, scope=EVERYTHING,
                                   expected_version=opened_at, actor_id=None)
    assert person.phone == "0991111111"


def test_an_edit_cannot_take_another_living_persons_national_id(db_session, people):
    raw = {"first_name": "Grace", "last_name": "Phiri", "sex": "F", "birth_date": "1950-03-03",
           "national_id": "MW1000001", "location": "SV1"}
    _, errors = services.update_individual(db_session, people["phiri"], raw, scope=EVERYTHING,
                                           expected_version=people["phiri"].version, actor_id=None)
    assert errors == {"national_id": "National ID MW1000001 is already registered."}


def test_enrolment_warns_about_a_similar_person_and_saves_once_confirmed(db_session, country, people):
    raw = {"first_name": "Chikondie", "last_name": "Banda", "sex": "F", "birth_date": "1990-01-01",
           "location": "NV2"}
    person, errors, blocking, similar = services.enrol_individual(db_session, raw, scope=EVERYTHING, actor_id=None)
    assert person is None and errors == {} and blocking == [] and similar == [people["banda"]]
    person, errors, _, _ = services.enrol_individual(db_session, raw, scope=EVERYTHING, actor_id=None,
                                                     confirm_similar=True)
    assert person.id and person.name_key == "banda chikondie"


def test_enrolment_with_a_registered_national_id_is_blocked(db_session, people):
    raw = {"first_name": "Other", "last_name": "Person", "sex": "M", "birth_date": "1980-01-01",
           "national_id": "mw1000001", "location": "SV2"}
    person, errors, blocking, _ = services.enrol_individual(db_session, raw, scope=EVERYTHING, actor_id=None,
                                                            confirm_similar=True)
    assert person is None and blocking == [people["banda"]]
    assert errors == {"national_id": "National ID MW1000001 is already registered."}


# --- households ---------------------------------------------------------------------------------

def test_a_new_household_has_its_head_as_primary_recipient(db_session, people):
    group = services.create_group(db_session, code="hh-1", name="Banda family", kind="household",
                                  location_id=None, head_id=people["banda"].id, scope=EVERYTHING, actor_id=None)
    assert group.code == "HH-1" and group.primary_recipient_id == people["banda"].id
    assert [(m.individual_id, m.role) for m in group.members] == [(people["banda"].id, "head")]
    assert services.check_household(db_session, group) == []


def test_a_household_without_a_head_is_refused(db_session, country):
    with pytest.raises(DomainError, match="needs a head"):
        services.create_group(db_session, code="HH-2", name="Nobody", kind="household",
                              location_id=country["NV1"].id, head_id=None, scope=EVERYTHING, actor_id=None)


def test_a_group_in_a_place_outside_the_users_area_is_refused_without_naming_the_place(db_session, country):
    north = Scope(paths=(country["N"].path,))
    with pytest.raises(DomainError) as refused:
        services.create_group(db_session, code="C9", name="Far away", kind="cooperative",
                              location_id=country["SV1"].id, head_id=None, scope=north, actor_id=None)
    assert str(refused.value) == "That place is outside your locations."


def test_a_person_belongs_to_at_most_one_household_but_to_many_cooperatives(
        db_session, people, make_household, make_group):
    first = make_household(head=people["banda"], members=[])
    second = make_household(head=people["phiri"], members=[])
    with pytest.raises(DomainError, match=f"already belongs to household {first.code}"):
        services.add_member(db_session, second, people["banda"].id, role="spouse", scope=EVERYTHING, actor_id=None)
    for code in ("C1", "C2"):
        coop = make_group("cooperative", code=code, members=[])
        services.add_member(db_session, coop, people["banda"].id, role="member", scope=EVERYTHING, actor_id=None)


def test_the_database_itself_refuses_a_second_household_or_a_second_head(db_session, people, make_household):
    first = make_household(head=people["banda"], members=[])
    second = make_household(head=people["phiri"], members=[])
    with pytest.raises(IntegrityError):
        with db_session.begin_nested():
            db_session.add(GroupMember(group_id=second.id, individual_id=people["banda"].id,
                                       group_kind="household", role="child"))
            db_session.flush()
    with pytest.raises(IntegrityError):
        with db_session.begin_nested():
            db_session.add(GroupMember(group_id=first.id, individual_id=people["bandawe"].id,
                                       group_kind="household", role="head"))
            db_session.flush()


def test_a_second_head_in_a_household_is_refused(db_session, people, make_household):
    group = make_household(head=people["banda"], members=[])
    with pytest.raises(DomainError, match="already has a head"):
        services.add_member(db_session, group, people["bandawe"].id, role="head", scope=EVERYTHING, actor_id=None)


def test_changing_the_head_demotes_the_former_head(db_session, people, make_household):
    group = make_household(head=people["banda"], members=[people["bandawe"]])
    child = next(m for m in group.members if m.individual_id == people["bandawe"].id)
    services.set_head(db_session, group, child.id, scope=EVERYTHING, former_head_role="spouse",
                      actor_id=None)
    roles = dict(db_session.execute(select(GroupMember.individual_id, GroupMember.role)
                                    .where(GroupMember.group_id == group.id)).all())
    assert roles == {people["bandawe"].id: "head", people["banda"].id: "spouse"}
    assert services.check_household(db_session, group) == []


def test_the_head_cannot_be_demoted_or_removed_while_others_remain(db_session, people, make_household):
    group = make_household(head=people["banda"], members=[people["bandawe"]])
    head = next(m for m in group.members if m.role == "head")
    with pytest.raises(DomainError, match="always has a head"):
        services.change_role(db_session, group, head.id, "child", scope=EVERYTHING, actor_id=None)
    with pytest.raises(DomainError, match="Choose another head"):
        services.remove_member(db_session, group, head.id, scope=EVERYTHING, actor_id=None)


def test_the_primary_recipient_cannot_leave_without_a_successor(db_session, people, make_household):
    group = make_household(head=people["banda"], members=[people["bandawe"]])
    child = next(m for m in group.members if m.role != "head")
    services.set_primary_recipient(db_session, group, child.id, scope=EVERYTHING, actor_id=None)
    with pytest.raises(DomainError, match="another primary recipient"):
        services.remove_member(db_session, group, child.id, scope=EVERYTHING, actor_id=None)


def test_moving_a_person_between_households_keeps_both_valid(db_session, people, make_household):
    source = make_household(head=people["banda"], members=[people["bandawe"]])
    target = make_household(head=people["phiri"], members=[])
    child = next(m for m in source.members if m.role != "head")
    services.move_member(db_session, source, child.id, target, role="child", scope=EVERYTHING, actor_id=None)
    db_session.expire_all()
    assert [m.individual_id for m in source.members] == [people["banda"].id]
    assert sorted(m.individual_id for m in target.members) == sorted([people["phiri"].id, people["bandawe"].id])
    assert services.check_household(db_session, source) == services.check_household(db_session, target) == []


def test_moving_the_head_is_refused_until_another_head_is_chosen(db_session, people, make_household):
    source = make_household(head=people["banda"], members=[people["bandawe"]])
    target = make_household(head=people["phiri"], members=[])
    head = next(m for m in source.members if m.role == "head")
    with pytest.raises(DomainError, match="Choose another head"):
        services.move_member(db_session, source, head.id, target, role="spouse", scope=EVERYTHING,
                             actor_id=None)


def test_group_search_finds_by_code_or_name_within_scope(db_session, country, people, make_household):
    make_household(head=people["banda"], members=[], code="HH-NORTH", name="Banda family")
    make_household(head=people["phiri"], members=[], code="HH-SOUTH", name="Phiri family")
    everything = services.search_groups(db_session, scope=EVERYTHING, filters={"q": "hh-"})
    assert [g.code for g in everything.rows] == ["HH-NORTH", "HH-SOUTH"]
    south = services.search_groups(db_session, scope=Scope(paths=(country["S"].path,)), filters={})
    assert [g.code for g in south.rows] == ["HH-SOUTH"]
    assert [g.code for g in services.search_groups(db_session, scope=EVERYTHING,
                                                   filters={"q": "phiri"}).rows] == ["HH-SOUTH"]


def test_export_rows_mask_identifiers_and_keep_to_the_scope(db_session, country, people):
    south = Scope(paths=(country["S"].path,))
    rows = list(services.export_rows(db_session, scope=south, filters={}, pii=False))
    assert len(rows) == 1 and rows[0][3] == "Phiri" and rows[0][7] == "•••••0001"
    rows = list(services.export_rows(db_session, scope=EVERYTHING, filters={"q": "banda"}, pii=True))
    assert [r[7] for r in rows] == ["MW1000001", "MW1000002"]


def test_custom_fields_are_saved_with_a_valid_pattern_only(db_session):
    with pytest.raises(DomainError, match="not a valid regular expression"):
        services.save_custom_field(db_session, None, name="card", label="Card", type="text", required=False,
                                   unique=False, pattern="[", choices=[], actor_id=None)
    with pytest.raises(DomainError, match="built-in"):
        services.save_custom_field(db_session, None, name="phone", label="Phone", type="text", required=False,
                                   unique=False, pattern="", choices=[], actor_id=None)
    field = services.save_custom_field(db_session, None, name="crop", label="Main crop", type="choice",
                                       required=True, unique=False, pattern="", choices=["Maize", " ", "Rice"],
                                       actor_id=None)
    assert field.choices == ["Maize", "Rice"]


def test_member_roles_are_editable_but_head_stays(db_session):
    services.save_member_role(db_session, code="lodger", label="Lodger", active=True, actor_id=None)
    assert ("lodger", "Lodger") in services.member_roles(db_session)
    with pytest.raises(DomainError, match="head role"):
        services.save_member_role(db_session, code="head", label="Head", active=False, actor_id=None)


@pytest.mark.parametrize("filters", [{"sex": "F"}, {"q": "band", "sex": "M"}, {"age_min": "18", "location": "N"},
                                     {"q": "MW1"}, {"born_from": "1940-01-01", "household": "no"}])
@pytest.mark.parametrize("sort", ["name", "-name", "birth_date", "-birth_date", "newest"])
def test_large_results_read_in_index_order_match_small_results_sorted(db_session, people, filters, sort):
    """Beyond the count cap the page is read in index order with the other filters applied
    row by row; it must be the same page as when the matches are collected and sorted."""
    sorted_page = services.search_individuals(db_session, scope=EVERYTHING, filters=filters, sort=sort)
    walked_page = services.search_individuals(db_session, scope=EVERYTHING, filters=filters, sort=sort,
                                              count_cap=1)
    assert [p.id for p in walked_page.rows] == [p.id for p in sorted_page.rows]


def test_an_impossible_age_and_birth_date_combination_finds_no_one(db_session, people):
    result = search(db_session, age_max="10", born_to="1960-01-01")
    assert result.rows == [] and result.count == 0


def test_an_export_continues_after_each_batch_without_losing_or_repeating_anyone(db_session, country,
                                                                             make_individual):
    for i in range(7):
        make_individual("Same", "Name", location=country["NV1"], birth_date=date(2000, 1, 1), sex="F")
    for sort in ("name", "-name", "birth_date", "newest"):
        rows = list(services.export_rows(db_session, scope=EVERYTHING, filters={"q": "name same"}, sort=sort,
                                         pii=True, batch=2))
        assert len(rows) == 7 and len({r[0] for r in rows}) == 7


def test_the_head_of_a_household_is_deleted_only_after_another_head_is_chosen(db_session, people, make_household):
    group = make_household(head=people["banda"], members=[people["bandawe"]])
    with pytest.raises(DomainError, match="choose another head first"):
        services.delete_individual(db_session, people["banda"], scope=EVERYTHING, actor_id=None)
    other = next(m for m in group.members if m.role != "head")
    services.set_head(db_session, group, other.id, scope=EVERYTHING, actor_id=None)
    services.set_primary_recipient(db_session, group, other.id, scope=EVERYTHING, actor_id=None)
    services.delete_individual(db_session, people["banda"], scope=EVERYTHING, actor_id=None)
    assert people["banda"].deleted_at is not None


def test_a_refused_deletion_names_a_household_only_inside_the_scope(db_session, country, people,
                                                                   make_household):
    make_household(head=people["phiri"], members=[people["banda"]], code="HH-NORTH", location=country["NV1"])
    south = Scope(paths=(country["S"].path,))
    with pytest.raises(DomainError, match="heads a household outside your area") as refused:
        services.delete_individual(db_session, people["phiri"], scope=south, actor_id=None)
    assert "HH-NORTH" not in refused.value.message
    with pytest.raises(DomainError, match="heads household HH-NORTH"):
        services.delete_individual(db_session, people["phiri"], scope=EVERYTHING, actor_id=None)


def test_a_moved_member_must_belong_to_the_household_it_is_moved_from(db_session, people, make_household):
    first = make_household(head=people["banda"], members=[people["bandawe"]])
    second = make_household(head=people["phiri"], members=[])
    child = next(m for m in first.members if m.role != "head")
    with pytest.raises(DomainError, match="not a member of this group"):
        services.move_member(db_session, second, child.id, first, role="child", scope=EVERYTHING,
                             actor_id=None)
    assert child.group_id == first.id


def test_a_reused_national_id_that_blocks_a_restore_is_masked_unless_the_user_may_see_it(
        db_session, country, people, make_individual):
    services.delete_individual(db_session, people["banda"], scope=EVERYTHING, actor_id=None)
    make_individual("Other", "Person", location=country["NV2"], national_id="MW1000001")
    with pytest.raises(DomainError) as masked:
        services.restore_individual(db_session, people["banda"], show_pii=False, actor_id=None)
    assert "•••••0001" in masked.value.message and "MW1000001" not in masked.value.message
    with pytest.raises(DomainError, match="national ID MW1000001"):
        services.restore_individual(db_session, people["banda"], show_pii=True, actor_id=None)


def test_an_export_names_a_household_outside_the_scope_only_as_such(db_session, country, people,
                                                                   make_household):
    make_household(head=people["banda"], members=[people["phiri"]], code="HH-NORTH")
    south = Scope(paths=(country["S"].path,))
    rows = list(services.export_rows(db_session, scope=south, filters={}, pii=False))
    assert [(r[3], r[11]) for r in rows] == [("Phiri", services.OUTSIDE_HOUSEHOLD)]
    rows = list(services.export_rows(db_session, scope=EVERYTHING, filters={"q": "phiri"}, pii=False))
    assert rows[0][11] == "HH-NORTH"


def test_a_deleted_member_cannot_be_made_head_or_primary_recipient(db_session, people, make_household):
    group = make_household(head=people["banda"], members=[people["bandawe"]])
    child = next(m for m in group.members if m.role != "head")
    services.delete_individual(db_session, people["bandawe"], scope=EVERYTHING, actor_id=None)
    with pytest.raises(DomainError, match="is deleted"):
        services.set_primary_recipient(db_session, group, child.id, scope=EVERYTHING, actor_id=None)
    with pytest.raises(DomainError, match="is deleted"):
        services.set_head(db_session, group, child.id, scope=EVERYTHING, actor_id=None)
    with pytest.raises(DomainError, match="is deleted"):
        services.change_role(db_session, group, child.id, "head", scope=EVERYTHING, actor_id=None)
    assert group.primary_recipient_id == people["banda"].id and child.role != "head"
