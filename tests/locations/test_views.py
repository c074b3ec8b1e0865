import pytest
from sqlalchemy import select

from portal.locations.models import Location


def test_a_field_officer_sees_only_the_path_to_and_inside_the_own_district(client, login, country):
    login("field_officer", [country["ND"]])
    roots = client.get("/locations/").get_data(as_text=True)
    assert "N region" in roots and "S region" not in roots
    assert client.get(f"/locations/?parent={country['S'].id}").status_code == 404
    assert client.get(f"/locations/?parent={country['SD'].id}").status_code == 404
    inside = client.get(f"/locations/?parent={country['NW'].id}").get_data(as_text=True)
    assert "NV1" in inside


def test_the_tree_counts_below_a_node_only_the_places_the_officer_may_open(
        client, login, country, make_location):
    make_location("ND2", "district", country["N"])  # a second district beside the officer's
    login("field_officer", [country["NV1"]])
    roots = client.get("/locations/").get_data(as_text=True)
    ward = client.get(f"/locations/?parent={country['ND'].id}").get_data(as_text=True)
    villages = client.get(f"/locations/?parent={country['NW'].id}").get_data(as_text=True)
    assert _below(roots, "N region") == "1" and _below(ward, "Place NW") == "1"
    assert "NV2" not in villages and "NV1" in villages


def _below(page: str, name: str) -> str:
    """The "Below" cell of the row whose first cell names ``name``."""
    import re

    row = re.search(rf"<tr>\s*<td>(?:<a [^>]*>)?{name}(?:</a>)?</td>(.*?)</tr>", page, re.S).group(1)
    return re.findall(r"<td>([^<]*)</td>", row)[2]

def test_a_field_officer_search_never_returns_another_district(client, login, country):
    login("field_officer", [country["ND"]])
    text = client.get("/locations/?q=V").get_data(as_text=True)
    assert "NV1" in text and "SV1" not in text


def test_location_search_answers_htmx_with_a_small_fragment(client, login, country):
    login("admin")
    response = client.htmx("get", "/locations/?q=NV")
    body = response.get_data(as_text=True)
    assert response.status_code == 200 and "<html" not in body and "NV1" in body
    assert len(body) < 4000
    assert "HX-Request" in response.headers["Vary"]


def test_editing_a_location_of_another_district_by_url_is_not_found(client, login, country):
    login("admin", [country["ND"]])
    assert client.get(f"/locations/{country['SV1'].id}/edit").status_code == 404
    response = client.post(f"/locations/{country['SV1'].id}/edit", data={"code": "SV1", "name": "Mine"})
    assert response.status_code == 404


def test_an_admin_adds_a_village_and_a_wrong_parent_is_a_field_error(client, login, country, db_session):
    login("admin")
    ok = client.post("/locations/new", data={"code": "NV3", "name": "Third", "kind": "village", "parent_code": "NW"})
    assert ok.status_code == 302
    assert db_session.scalar(select(Location).where(Location.code == "NV3")).parent.code == "NW"
    bad = client.post("/locations/new", data={"code": "NV4", "name": "x", "kind": "village", "parent_code": "ND"})
    assert bad.status_code == 422
    assert "must be a ward" in bad.get_data(as_text=True)


@pytest.mark.parametrize("too_large", ["2147483648", "99999999999999999999999"])
def test_a_location_id_too_large_for_any_record_is_not_found_rather_than_an_error(client, login, country,
                                                                               too_large):
    login("admin")
    assert client.get(f"/locations/{too_large}/edit").status_code == 404
    assert client.post(f"/locations/{too_large}/edit", data={"code": "X", "name": "X"}).status_code == 404
