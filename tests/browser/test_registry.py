"""The Individuals page in chromium: search as you type, filters, back button, inline edit."""
import re
from datetime import date


def _people(make_individual, country, db_session):
    people = [make_individual("Chikondi", "Banda", location=country["NV1"], sex="F", birth_date=date(1990, 1, 1)),
              make_individual("Kondwani", "Bandawe", location=country["NV2"], sex="M", birth_date=date(1985, 1, 1)),
              make_individual("Grace", "Phiri", location=country["SV1"], sex="F", birth_date=date(1970, 1, 1))]
    db_session.commit()
    return people


def test_search_as_you_type_updates_the_results_and_the_address(page, browser_login, live_server, country,
                                                                make_individual, db_session):
    _people(make_individual, country, db_session)
    browser_login(page, "program_manager")
    page.goto(f"{live_server}/registry/individuals")
    rows = page.locator("#individual-rows")
    assert "Phiri, Grace" in rows.inner_text()
    marker = page.evaluate("() => (window.stillTheSamePage = true)")
    page.locator("input[name=q]").press_sequentially("band", delay=60)
    page.wait_for_function("() => !document.querySelector('#individual-rows').innerText.includes('Phiri')")
    text = rows.inner_text()
    assert "Banda, Chikondi" in text and "Bandawe, Kondwani" in text
    assert page.evaluate("() => window.stillTheSamePage") is marker  # no full page load
    page.wait_for_function("() => location.search.includes('q=band')")
    page.select_option("select[name=sex]", "M")
    page.wait_for_function("() => !document.querySelector('#individual-rows').innerText.includes('Chikondi')")
    assert "Bandawe, Kondwani" in rows.inner_text()
    page.go_back()
    page.wait_for_function("() => document.querySelector('#individual-rows').innerText.includes('Chikondi')")


def test_a_field_officer_types_and_sees_only_their_villages(page, browser_login, live_server, country,
                                                            make_individual, db_session):
    _people(make_individual, country, db_session)
    browser_login(page, "field_officer", [country["S"]])
    page.goto(f"{live_server}/registry/individuals")
    page.locator("input[name=q]").press_sequentially("b", delay=50)
    page.wait_for_function("() => document.querySelector('#individual-rows').innerText.includes('No one matches')")
    assert "Banda" not in page.locator("#results").inner_text()


def test_inline_edit_saves_in_place(page, browser_login, live_server, country, make_individual, db_session):
    banda = _people(make_individual, country, db_session)[0]
    browser_login(page, "program_manager")
    page.goto(f"{live_server}/registry/individuals/{banda.id}")
    page.get_by_role("link", name="Edit").click()
    page.fill("input[name=phone]", "0999123456")
    # What the page shows while the save is on its way (read as the request starts).
    page.evaluate("""() => document.addEventListener('htmx:beforeRequest', (e) => {
        window.whileSaving = {busy: document.documentElement.classList.contains('busy'),
                              buttons: Array.from(e.detail.elt.querySelectorAll('button')).map((b) => b.disabled)};
    })""")
    page.get_by_role("button", name="Save").click()
    page.wait_for_function("() => document.querySelector('#person-card').innerText.includes('0999123456')")
    assert page.locator("#person-card input").count() == 0
    # A slow link shows the save was taken, and a second tap could not send it again.
    assert page.evaluate("() => window.whileSaving") == {"busy": True, "buttons": [True]}  # Save
    assert not page.evaluate("() => document.documentElement.classList.contains('busy')")
    # The message saying so reaches a page that had none when it loaded.
    page.wait_for_function("() => document.querySelector('#flash-messages').innerText.includes('Saved')")


def test_enrolment_warns_about_a_similar_person_and_saves_anyway(page, browser_login, live_server, country,
                                                                 make_individual, db_session):
    _people(make_individual, country, db_session)
    browser_login(page, "program_manager")
    page.goto(f"{live_server}/registry/individuals/new")
    page.fill("input[name=first_name]", "Chikondi")
    page.fill("input[name=last_name]", "Banda")
    page.select_option("select[name=sex]", "F")
    page.fill("input[name=birth_date]", "1990-01-01")
    page.fill("input[name=location]", "NV2")
    page.get_by_role("button", name="Save").click()
    page.wait_for_selector("#similar-people")
    assert "Possibly the same person" in page.locator("#similar-people").inner_text()
    page.get_by_role("button", name="Save anyway").click()
    page.wait_for_url(re.compile(r"/registry/individuals/\d+$"))
    assert page.locator("h1").first.inner_text() == "Chikondi Banda"
