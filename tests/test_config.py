"""Settings read from the environment."""
import config


def test_an_operator_who_set_the_old_name_of_the_inline_fix_limit_keeps_their_limit(monkeypatch):
    monkeypatch.delenv("UPLOAD_FIX_INLINE_ROWS", raising=False)
    monkeypatch.setenv("UPLOAD_FIX_MAX_ROWS", "777")
    assert config.load()["UPLOAD_FIX_INLINE_ROWS"] == 777


def test_the_new_name_of_the_inline_fix_limit_wins_over_the_old(monkeypatch):
    monkeypatch.setenv("UPLOAD_FIX_MAX_ROWS", "777")
    monkeypatch.setenv("UPLOAD_FIX_INLINE_ROWS", "900")
    assert config.load()["UPLOAD_FIX_INLINE_ROWS"] == 900


def test_without_either_name_fixes_of_up_to_5000_rows_are_made_while_the_page_waits(monkeypatch):
    monkeypatch.delenv("UPLOAD_FIX_INLINE_ROWS", raising=False)
    monkeypatch.delenv("UPLOAD_FIX_MAX_ROWS", raising=False)
    assert config.load()["UPLOAD_FIX_INLINE_ROWS"] == 5000
