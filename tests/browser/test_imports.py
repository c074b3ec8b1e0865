"""A field officer uploads a file with mistakes, fixes them in the grid, imports, and finds
the people in search, in chromium with the real worker."""

HEADER = "First name,Last name,Sex,Birth date,National ID,Village code,Household code,Role,Primary recipient\n"
FILE = (HEADER
        + "Tiyamike,Zimba,F,1985-04-02,BRZ001,NV1,BHH1,head,yes\n"
        + "Kondwani,Zimba,boy,2012-07-09,BRZ002,NV1,BHH1,son,no\n"  # sex is fine, role is not
        + "Limbani,Zimba,M,2014-13-01,BRZ003,NV1,BHH1,child,no\n"  # month 13
        + "Chisomo,Zimba,F,2016-01-01,BRZ004,NOWHERE,BHH1,child,no\n")  # unknown village


def test_an_officer_fixes_a_file_in_the_grid_imports_it_and_finds_the_people(
        page, browser_login, live_server, country, tmp_path):
    from playwright.sync_api import expect

    path = tmp_path / "zimba family.csv"
    path.write_text(FILE)
    browser_login(page, "field_officer", [country["N"]])

    page.goto(f"{live_server}/imports/")
    page.get_by_role("link", name="Upload a file").click()
    page.set_input_files("input[name=file]", str(path))
    page.get_by_role("button", name="Upload and check").click()

    status = page.locator("#upload-status")
    expect(status).to_have_attribute("data-status", "validated", timeout=30_000)  # polled by htmx
    expect(status).to_contain_text("With errors")
    page.get_by_role("link", name="Fix 3 row(s)").click()

    grid = page.locator("#upload-grid")
    expect(grid.locator("tbody tr")).to_have_count(3)
    expect(grid).to_contain_text("Unknown role 'son'; use one of head, spouse, child")
    expect(grid.locator("#row-2")).to_have_count(0)  # a good row is not shown

    # On the 768 px tablet the row's buttons are in view, not past the grid's right edge.
    edit = page.locator("#row-3").get_by_role("button", name="Edit").bounding_box()
    assert edit["x"] + edit["width"] <= 768 and edit["height"] >= 44

    # Fix the role inline: the row is checked again at once.
    page.locator("#row-3").get_by_role("button", name="Edit").click()
    save = page.locator("#row-3").get_by_role("button", name="Save").bounding_box()
    assert save["x"] + save["width"] <= 768
    page.locator("#row-3 input[name=role]").fill("child")
    page.locator("#row-3").get_by_role("button", name="Save").click()
    expect(page.locator("#row-3")).to_have_attribute("data-status", "valid")

    # Fix the date inline.
    page.locator("#row-4").get_by_role("button", name="Edit").click()
    page.locator("#row-4 input[name=birth_date]").fill("2014-01-13")
    page.locator("#row-4").get_by_role("button", name="Save").click()
    expect(page.locator("#row-4")).to_have_attribute("data-status", "valid")

    # Fix the village with find and replace.
    page.locator("summary", has_text="Find and replace").click()
    page.select_option("select[name=field]", "location")
    page.fill("input[name=find]", "nowhere")
    page.fill("input[name=replace]", "NV2")
    page.get_by_role("button", name="Replace").click()
    expect(page.locator(".flash-success")).to_contain_text("1 cell(s) replaced")
    expect(page.locator("#upload-grid")).to_contain_text("No row is left to fix.")

    page.get_by_role("link", name="Back to the summary").click()
    page.get_by_role("button", name="Import 4 valid row(s)").click()
    expect(page.locator("#upload-status")).to_have_attribute("data-status", "imported", timeout=30_000)
    expect(page.locator("#upload-status")).to_contain_text("New households")

    page.goto(f"{live_server}/registry/individuals")
    page.fill("input[name=q]", "zimba")
    page.press("input[name=q]", "Enter")
    results = page.locator("main")
    for name in ("Tiyamike", "Kondwani", "Limbani", "Chisomo"):
        expect(results).to_contain_text(name)


def _grid_of_a_new_upload(page, browser_login, live_server, country, path, lines: str, rows_to_fix: int):
    """A field officer uploads ``lines`` as the file ``path``, waits for its check and opens
    its rows to fix."""
    from playwright.sync_api import expect

    path.write_text(HEADER + lines)
    browser_login(page, "field_officer", [country["N"]])
    page.goto(f"{live_server}/imports/new")
    page.set_input_files("input[name=file]", str(path))
    page.get_by_role("button", name="Upload and check").click()
    expect(page.locator("#upload-status")).to_have_attribute("data-status", "validated", timeout=30_000)
    page.get_by_role("link", name=f"Fix {rows_to_fix} row(s)").click()


def _fix_the_heads_sex(page):
    page.locator("#row-2").get_by_role("button", name="Edit").click()
    page.locator("#row-2 input[name=sex]").fill("F")
    page.locator("#row-2").get_by_role("button", name="Save").click()


def test_fixing_a_heads_row_in_the_grid_shows_the_member_waiting_for_it_fixed_too(
        page, browser_login, live_server, country, tmp_path):
    from playwright.sync_api import expect

    _grid_of_a_new_upload(page, browser_login, live_server, country, tmp_path / "banda family.csv",
                          "Mercy,Banda,Q,1980-03-04,,NV1,BHH9,head,yes\n"
                          "Juma,Banda,M,2010-05-06,,NV1,BHH9,child,no\n", rows_to_fix=2)
    expect(page.locator("#row-3")).to_have_attribute("data-status", "error")  # waits for its head

    _fix_the_heads_sex(page)
    expect(page.locator("#row-2")).to_have_attribute("data-status", "valid")
    # Swapped out of band in the same answer, without reloading the page.
    expect(page.locator("#row-3")).to_have_attribute("data-status", "valid")
    expect(page.locator("#upload-grid tbody tr")).to_have_count(2)


def test_a_row_being_edited_keeps_its_form_when_a_fix_elsewhere_changes_it(
        page, browser_login, live_server, country, tmp_path):
    from playwright.sync_api import expect

    _grid_of_a_new_upload(page, browser_login, live_server, country, tmp_path / "phiri family.csv",
                          "Grace,Phiri,Q,1981-03-04,,NV1,BHH8,head,yes\n"
                          "Imani,Phiri,M,2011-05-06,,NV1,BHH8,child,no\n", rows_to_fix=2)

    page.locator("#row-3").get_by_role("button", name="Edit").click()
    page.locator("#row-3 input[name=first_name]").fill("Imanuel")  # typed, not saved yet
    _fix_the_heads_sex(page)
    expect(page.locator("#row-2")).to_have_attribute("data-status", "valid")
    expect(page.locator("#row-3 input[name=first_name]")).to_have_value("Imanuel")


def test_a_find_and_replace_too_large_for_the_page_shows_its_progress_and_gives_back_the_fixed_rows(
        page, browser_login, live_server, country, tmp_path, app, monkeypatch):
    from playwright.sync_api import expect

    monkeypatch.setitem(app.config, "UPLOAD_FIX_INLINE_ROWS", 1)  # any fix of two rows or more
    _grid_of_a_new_upload(page, browser_login, live_server, country, tmp_path / "mwale family.csv",
                          "Asha,Mwale,Q,1982-03-04,,NV1,BHH7,head,yes\n"
                          "Baraka,Mwale,Q,2012-05-06,,NV1,BHH7,child,no\n", rows_to_fix=2)
    page.get_by_text("Find and replace, or upload fixed rows").click()
    page.get_by_label("Column").select_option(label="Sex")
    page.get_by_label("Text", exact=True).fill("q")
    page.get_by_label("Replace with").fill("F")
    page.get_by_role("button", name="Replace").click()
    # The summary page, polling the worker's job until the upload is back to fix or import.
    expect(page.locator("#flash-messages")).to_contain_text("it is made in the background")
    expect(page.locator("#upload-status")).to_have_attribute("data-status", "validated", timeout=30_000)
    expect(page.locator("#upload-status")).to_contain_text("2 cell(s) replaced and their rows checked again.")
    expect(page.get_by_role("button", name="Import 2 valid row(s)")).to_be_visible()
