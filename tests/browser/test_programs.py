"""A program manager enrols people by criteria and changes a beneficiary's status, in chromium."""
from datetime import date


def test_a_manager_enrols_by_criteria_then_activates_a_beneficiary(page, browser_login, live_server,
                                                                   db_session, country, person,
                                                                   program):
    from playwright.sync_api import expect

    plan = program(name="Old-age pension", max_beneficiaries=10)
    for village in ("NV1", "NV2"):
        person(village, sex="F", birth_date=date(1950, 3, 1), first_name=f"Elder{village}")
    person("NV1", sex="M", birth_date=date(1950, 3, 1))
    person("SV1", sex="F", birth_date=date(1950, 3, 1))
    db_session.commit()
    browser_login(page, "program_manager")

    page.goto(f"{live_server}/programs/{plan.id}")
    page.get_by_role("link", name="Enrol by criteria").click()
    page.fill("input[name=location]", "N")
    page.select_option("select[name=sex]", "F")
    page.fill("input[name=age_min]", "65")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#criteria-counts")).to_contain_text("2 match")
    expect(page.locator("#criteria-counts")).to_contain_text("2 to enrol")
    expect(page.locator("#criteria-counts")).to_contain_text("10 places left")
    page.locator("#confirm-enrol").click()

    page.wait_for_url(f"**/programs/{plan.id}/beneficiaries")
    expect(page.locator(".flash-success")).to_contain_text("Enrolled 2 by criteria")
    expect(page.locator("nav.tabs[aria-label=Status]")).to_contain_text("Potential 2")
    page.fill("input[name=q]", "eldernv2")  # active search narrows the list as one types
    expect(page.locator("#beneficiary-list tbody")).not_to_contain_text("ElderNV1")
    expect(page.locator("#beneficiary-list tbody")).to_contain_text("ElderNV2 Banda")
    page.fill("input[name=q]", "")
    page.get_by_role("link", name="ElderNV1 Banda").click()

    expect(page.locator("#current-status")).to_have_text("Potential")
    page.select_option("select[name=to_status]", "active")
    page.fill("input[name=reason]", "Validated by the community committee")
    page.get_by_role("button", name="Change status").click()
    expect(page.locator("#current-status")).to_have_text("Active")
    expect(page.locator("ol.timeline")).to_contain_text("Validated by the community committee")
    expect(page.locator("ol.timeline")).to_contain_text("Enrolled by criteria")

    page.goto(f"{live_server}/programs/{plan.id}")
    expect(page.locator("body")).to_contain_text("2 of 10 places taken; 8 left.")
