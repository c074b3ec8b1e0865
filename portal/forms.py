"""The base of every form in the portal: what no typed field may hold."""
from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField, TextAreaField
from wtforms.validators import ValidationError

from portal.registry.validation import control_character


def _refuse_control_characters(form, field) -> None:
    problem = isinstance(field.data, str) and control_character(field.data)
    if problem:
        raise ValidationError(f"This {problem}, pasted with the text; type it again.")


class Form(FlaskForm):
    """A form whose text fields refuse control characters with a message beside the field.

    A name pasted from a PDF can carry one: stored, it made every XLSX export of the person
    fail and could never be matched by an upload, which refuses such cells. Passwords are
    left as typed."""

    def validate(self, extra_validators=None):
        extra = {name: list(validators) for name, validators in (extra_validators or {}).items()}
        for name, field in self._fields.items():
            if isinstance(field, (StringField, TextAreaField)) and not isinstance(field, PasswordField):
                extra.setdefault(name, []).append(_refuse_control_characters)
        return super().validate(extra)
