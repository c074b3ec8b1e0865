"""Each role signs in through the real pages and sees the menu that role should see."""
import pytest
from flask import url_for

from portal.web import MENU

EXPECTED_HIDDEN = {
    "viewer": {"Admin", "Jobs", "Audit log"},
    "field_officer": {"Admin", "Audit log"},
    "program_manager": {"Admin"},
    "admin": {"Audit log"},  # admins reach it from the Admin pages
}


@pytest.mark.parametrize("role", ["admin", "program_manager", "field_officer", "viewer"])
def test_each_role_sees_its_menu_and_every_menu_page_opens(page, browser_login, live_server, role, app, country):
    browser_login(page, role, None if role != "field_officer" else [country["ND"]])
    labels = page.locator("nav.menu > a").all_inner_texts()
    present = {label for label, endpoint, *_ in MENU if endpoint in app.view_functions}
    assert set(labels) == present - EXPECTED_HIDDEN[role]
    for label in labels:
        page.click("#main")  # nothing open
        link = page.locator("nav.menu > a", has_text=label).first
        href = link.get_attribute("href")
        response = page.goto(f"{live_server}{href}")
        assert response.status == 200, f"{label} -> {href} answered {response.status}"
        assert page.locator("h1").count() >= 1


def test_a_field_officer_browsing_locations_sees_only_the_own_district(page, browser_login, live_server, country):
    browser_login(page, "field_officer", [country["ND"]])
    page.goto(f"{live_server}/locations/")
    page.get_by_role("link", name="N region").click()
    assert page.locator("#location-nodes").inner_text().count("ND") >= 1
    page.goto(f"{live_server}/locations/")
    assert "S region" not in page.locator("#location-nodes").inner_text()
    page.fill("input[type=search]", "S")
    page.wait_for_timeout(600)
    text = page.locator("#location-nodes").inner_text()
    assert "SV1" not in text and "SD" not in text


def test_a_tablet_user_opens_the_menu_with_the_menu_button(page, browser_login, live_server):
    browser_login(page, "admin")
    page.set_viewport_size({"width": 768, "height": 1024})
    assert not page.locator("nav.menu").is_visible()
    page.click("label.menu-button")
    assert page.locator("nav.menu").is_visible()
    box = page.locator("nav.menu > a").first.bounding_box()
    assert box["height"] >= 44


# The smallest text a field officer's tablet shows, read at arm's length.
SMALLEST_TEXT_PX = 14
_SMALL_TEXT = """() => [...document.querySelectorAll('body *')].filter(e =>
    e.offsetParent !== null && !e.closest('svg') &&
    [...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim()) &&
    parseFloat(getComputedStyle(e).fontSize) < %d
).map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : '') + ' '
      + getComputedStyle(e).fontSize + ': ' + e.textContent.trim().slice(0, 40))""" % SMALLEST_TEXT_PX


def test_on_a_tablet_no_text_of_any_menu_page_is_smaller_than_14_px(page, browser_login, live_server, app,
                                                                  db_session, program):
    plan = program(max_beneficiaries=10)  # a list with its status badge and its cap
    db_session.commit()
    browser_login(page, "admin")
    page.set_viewport_size({"width": 768, "height": 1024})
    with app.test_request_context():
        addresses = [url_for(endpoint) for _label, endpoint, *_ in MENU if endpoint in app.view_functions]
        addresses += [url_for("programs.show", program_id=plan.id),
                      url_for("programs.beneficiaries", program_id=plan.id)]
    small = {}
    for address in addresses:
        page.goto(f"{live_server}{address}")
        found = page.evaluate(_SMALL_TEXT)
        if found:
            small[address] = found
    assert small == {}, small
