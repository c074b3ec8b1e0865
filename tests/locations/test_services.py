import pytest
from sqlalchemy import func, select

from portal.errors import DomainError
from portal.locations import services
from portal.locations.models import Location
from portal.locations.services import Scope


def test_a_scope_covers_its_locations_and_everything_below_them(db_session, country):
    scope = Scope(paths=(country["ND"].path,))
    visible = set(db_session.scalars(select(Location.code).where(scope.location_clause())))
    assert visible == {"ND", "NW", "NV1", "NV2"}
    assert scope.allows(country["NV2"]) and not scope.allows(country["SV1"])
    assert not scope.allows(country["N"])  # above the scope root
    assert scope.ancestors_visible(country["N"])


def test_a_user_with_no_locations_sees_nothing_rather_than_everything(db_session, country):
    scope = Scope()
    assert db_session.scalar(select(Location.id).where(scope.location_clause())) is None


def test_a_village_needs_a_ward_as_parent(db_session, country, make_location):
    with pytest.raises(DomainError, match="must be a ward"):
        make_location("X1", "village", country["ND"])
    with pytest.raises(DomainError, match="needs a parent"):
        make_location("X2", "district", None)


def test_the_scope_within_another_sees_only_what_both_see(country):
    north, district, village = (country[k].path for k in ("N", "ND", "NV1"))
    everything = Scope(everything=True)
    assert Scope(paths=(north,)).within(everything) == Scope(paths=(north,))
    assert everything.within(Scope(paths=(village,))) == Scope(paths=(village,))
    assert Scope(paths=(north,)).within(Scope(paths=(village, country["SV1"].path))) == Scope(paths=(village,))
    assert Scope(paths=(district,)).within(Scope(paths=(north,))) == Scope(paths=(district,))
    assert Scope(paths=(north,)).within(Scope(paths=(country["S"].path,))) == Scope(paths=())

def test_moving_a_ward_moves_its_villages_in_the_scope_too(db_session, country):
    everything = Scope(everything=True)
    services.update_location(db_session, country["NW"], code="NW", name="Moved ward",
                             parent=country["SD"], scope=everything)
    db_session.flush()
    south = Scope(paths=(country["SD"].path,))
    visible = set(db_session.scalars(select(Location.code).where(south.location_clause())))
    assert {"NW", "NV1", "NV2"} <= visible


def test_a_location_cannot_move_below_itself(db_session, country, make_location):
    with pytest.raises(DomainError):
        services.update_location(db_session, country["N"], code="N", name="N", parent=None,
                                 scope=Scope(everything=True))  # fine: stays a root
        services.update_location(db_session, country["ND"], code="ND", name="ND",
                                 parent=country["NW"], scope=Scope(everything=True))


def test_a_field_officer_cannot_add_a_location_outside_the_own_district(db_session, country):
    with pytest.raises(DomainError, match="inside your own area"):
        services.create_location(db_session, code="SW9", name="x", kind="ward", parent=country["SD"],
                                 scope=Scope(paths=(country["ND"].path,)))


CSV = "Code;Name;Type;Parent code\nR9;Nine;region;\nR9D1;Dee;district;R9\nR9D1W1;Wu;ward;R9D1\nR9D1W1V1;Vee;village;R9D1W1\n"


def test_a_csv_with_semicolons_and_any_header_case_imports_parents_before_children(db_session):
    rows, errors = services.parse_location_csv(CSV)
    assert errors == []
    result = services.import_locations(db_session, list(reversed(rows)), scope=Scope(everything=True))
    assert result == {"created": 4, "updated": 0, "rows": 4}
    village = db_session.scalar(select(Location).where(Location.code == "R9D1W1V1"))
    assert [c.code for c in services.breadcrumb(village)] == ["R9", "R9D1", "R9D1W1", "R9D1W1V1"]


def test_importing_the_same_csv_twice_creates_nothing_new(db_session):
    rows, _ = services.parse_location_csv(CSV)
    services.import_locations(db_session, rows, scope=Scope(everything=True))
    again = services.import_locations(db_session, rows, scope=Scope(everything=True))
    assert again["created"] == 0 and again["updated"] == 0


def test_every_bad_line_is_reported_and_nothing_is_imported(db_session):
    text = ("code,name,type,parent code\nA,Aa,region,\nB,Bb,planet,\nC,,district,A\n"
            "D,Dd,village,NOPE\nA,Again,region,\n")
    rows, errors = services.parse_location_csv(text)
    with pytest.raises(DomainError) as exc:
        services.import_locations(db_session, rows, scope=Scope(everything=True))
    message = exc.value.message
    assert "Line 3: type 'planet'" in message
    assert "Line 4: code and name are required" in message
    assert "Line 5: parent code 'NOPE'" in message
    assert "Line 6: code A already appears on line 2" in message


def test_a_code_or_name_too_long_for_its_column_is_named_by_line_and_nothing_is_imported(db_session):
    text = f"code,name,type,parent code\nA,Aa,region,\n{'C' * 33},Cc,region,\nD,{'d' * 121},region,\n"
    rows, _errors = services.parse_location_csv(text)
    with pytest.raises(DomainError) as exc:
        services.import_locations(db_session, rows, scope=Scope(everything=True))
    assert exc.value.message == ("Line 3: the code is 33 characters long; at most 32 are allowed.\n"
                                 "Line 4: the name is 121 characters long; at most 120 are allowed.")
    assert db_session.scalar(select(func.count()).select_from(Location)) == 0


def test_a_file_without_the_needed_columns_is_refused_with_the_expected_header():
    rows, errors = services.parse_location_csv("id,label\n1,x\n")
    assert rows == [] and "missing column(s) code, name, type" in errors[0]


def test_windows_1252_files_are_decoded():
    assert services.decode_text("code,name\nX,Bété".encode("cp1252")).endswith("Bété")
    assert services.decode_text("\ufeffcode".encode("utf-8")) == "code"


@pytest.mark.parametrize("code,name", [("NV\x079", "Bell village"), ("NV9", "Null\x00village")])
def test_a_locations_file_with_a_control_character_in_a_code_or_name_is_refused_by_line(
        db_session, country, code, name):
    text = f'code,name,type,parent code\n{code},"{name}",village,NW\n'
    rows, errors = services.parse_location_csv(text)
    assert errors == []
    before = db_session.scalar(select(func.count()).select_from(Location))
    with pytest.raises(DomainError) as refused:
        services.import_locations(db_session, rows, scope=Scope(everything=True))
    assert "Line 2" in refused.value.message
    # Counted, not looked up by name: PostgreSQL refuses a NUL even in a query.
    assert db_session.scalar(select(func.count()).select_from(Location)) == before



def test_a_code_that_differs_from_another_only_in_capitals_is_refused_when_added_or_renamed(
        db_session, country):
    everything = Scope(everything=True)
    with pytest.raises(DomainError, match="already used as NV1: an upload typing either"):
        services.create_location(db_session, code="nv1", name="Lower village", kind="village",
                                 parent=country["NW"], scope=everything)
    with pytest.raises(DomainError, match="The code nv2 is already used as NV2"):
        services.update_location(db_session, country["NV1"], code="nv2", name="Place NV1",
                                 parent=country["NW"], scope=everything)
    # Its own code in other capitals is no clash with itself.
    services.update_location(db_session, country["NV1"], code="nv1", name="Place NV1",
                             parent=country["NW"], scope=everything)
    assert country["NV1"].code == "nv1"


def test_a_locations_file_naming_a_registered_code_in_other_capitals_or_one_code_twice_so_is_refused(
        db_session, country):
    text = ("code,name,type,parent code\nnv1,Lower village,village,NW\n"
            "NV7,Seventh,village,NW\nnv7,Seventh again,village,NW\n")
    rows, errors = services.parse_location_csv(text)
    assert errors == []
    before = db_session.scalar(select(func.count()).select_from(Location))
    with pytest.raises(DomainError) as refused:
        services.import_locations(db_session, rows, scope=Scope(everything=True))
    assert refused.value.message.splitlines() == [
        "Line 4: code nv7 already appears on line 3 as NV7 (codes are unique whatever their capitals).",
        "Line 2: The code nv1 is already used as NV1: an upload typing either in any capitals "
        "could not tell the two places apart."]
    assert db_session.scalar(select(func.count()).select_from(Location)) == before
