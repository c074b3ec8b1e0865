"""Registry forms. People are validated by ``validation.clean_individual`` (the same rules as
uploads); these forms render the fields, carry CSRF, and show the errors it returns."""
from __future__ import annotations

from wtforms import (BooleanField, HiddenField, IntegerField, SelectField, StringField,
                     TextAreaField)
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from portal.forms import Form
from portal.privacy import PII_FIELDS, mask
from portal.registry.models import FIELD_TYPES, GROUP_KINDS, SEXES
from portal.registry.validation import ID_TYPES

CUSTOM_PREFIX = "cf_"
FIELD_TYPE_LABELS = {"text": "Text", "integer": "Whole number", "decimal": "Number",
                     "boolean": "Yes/no", "date": "Date", "choice": "Choice list"}


class IndividualForm(Form):
    first_name = StringField("First name")
    middle_name = StringField("Middle name")
    last_name = StringField("Last name")
    sex = SelectField("Sex", choices=[("", "—")] + list(SEXES.items()))
    birth_date = StringField("Date of birth", render_kw={"type": "date"})
    national_id_type = SelectField("ID type", choices=[(t, t.replace("_", " ").capitalize())
                                                       for t in ID_TYPES])
    national_id = StringField("National ID", render_kw={"autocomplete": "off"})
    phone = StringField("Phone", render_kw={"type": "tel"})
    location = StringField("Village code", description="The code of the person's village, e.g. R1D01W1V1.")
    version = HiddenField()
    confirm = HiddenField()

    custom_names: list[str] = []
    masked: dict[str, tuple[str, str | None]] = {}  # field -> (value shown masked, value stored)

    def raw(self) -> dict:
        """The submitted values as ``clean_individual`` takes them; a masked identifier that
        comes back as it was shown keeps the stored value, a newly typed one replaces it."""
        raw = {k: getattr(self, k).data for k in ("first_name", "middle_name", "last_name", "sex",
                                                   "birth_date", "national_id_type", "national_id",
                                                   "phone", "location")}
        for name, (shown, stored) in self.masked.items():
            if (raw[name] or "").strip() == shown:
                raw[name] = stored
        for name in self.custom_names:
            raw[name] = getattr(self, CUSTOM_PREFIX + name).data
        return raw

    def show_errors(self, errors: dict) -> None:
        for key, message in errors.items():
            name = key if key in self._fields else CUSTOM_PREFIX + key
            if name in self._fields:
                self._fields[name].errors = list(self._fields[name].errors or []) + [message]
            else:
                self.form_errors.append(message)

    def custom_fields_rendered(self):
        return [getattr(self, CUSTOM_PREFIX + n) for n in self.custom_names]


def individual_form(custom_fields, person=None, *, show_pii: bool, **kwargs) -> IndividualForm:
    """The form with one input per active custom field; a person's national ID and phone
    are shown masked unless ``show_pii``."""

    class Form(IndividualForm):
        pass

    Form.custom_names = []
    for f in custom_fields:
        label = f.label + ("" if f.required else " (optional)")
        if f.type == "boolean":
            field = SelectField(label, choices=[("", "—"), ("yes", "Yes"), ("no", "No")])
        elif f.type == "choice":
            field = SelectField(label, choices=[("", "—")] + [(str(c), str(c)) for c in f.choices or []])
        elif f.type == "date":
            field = StringField(label, render_kw={"type": "date"})
        elif f.type in ("integer", "decimal"):
            field = StringField(label, render_kw={"inputmode": "numeric" if f.type == "integer" else "decimal"})
        else:
            field = StringField(label)
        setattr(Form, CUSTOM_PREFIX + f.name, field)
        Form.custom_names.append(f.name)
    form = Form(**kwargs)
    if person is not None and not show_pii:
        form.masked = {k: (mask(getattr(person, k)), getattr(person, k)) for k in sorted(PII_FIELDS)}
        for key, (shown, _) in form.masked.items():
            if shown:
                getattr(form, key).description = "Shown masked: leave it to keep it, or type a new one."
    if person is not None and not form.is_submitted():
        for key in ("first_name", "middle_name", "last_name", "sex", "national_id_type",
                    "national_id", "phone"):
            getattr(form, key).data = getattr(person, key) or ""
        for key, (shown, _) in form.masked.items():
            getattr(form, key).data = shown
        form.birth_date.data = person.birth_date.isoformat() if person.birth_date else ""
        form.location.data = person.location.code if person.location else ""
        form.version.data = str(person.version)
        for f in custom_fields:
            value = (person.custom or {}).get(f.name)
            if isinstance(value, bool):
                value = "yes" if value else "no"
            getattr(form, CUSTOM_PREFIX + f.name).data = "" if value is None else str(value)
    return form


class CustomFieldForm(Form):
    name = StringField("Name", validators=[DataRequired(), Length(max=40)],
                       description="Lower case, digits and _; the column name in uploads.")
    label = StringField("Label", validators=[DataRequired(), Length(max=80)])
    type = SelectField("Type", choices=[(t, FIELD_TYPE_LABELS[t]) for t in FIELD_TYPES])
    required = BooleanField("Required")
    unique = BooleanField("Unique (no two living people share a value)")
    pattern = StringField("Pattern", validators=[Optional(), Length(max=200)],
                          description=r"Optional regular expression the whole value must match, e.g. [A-Z]{2}\d{4}.")
    choices = TextAreaField("Choices", description="For a choice list: one choice per line.")
    position = IntegerField("Position", default=0, validators=[Optional(), NumberRange(min=-10_000, max=10_000)])
    active = BooleanField("Active", default=True)


class MemberRoleForm(Form):
    code = StringField("Code", validators=[DataRequired(), Length(max=30)])
    label = StringField("Label", validators=[DataRequired(), Length(max=60)])
    active = BooleanField("Active", default=True)


class GroupForm(Form):
    code = StringField("Code", validators=[DataRequired(), Length(max=40)])
    name = StringField("Name", validators=[DataRequired(), Length(max=120)])
    kind = SelectField("Type", choices=list(GROUP_KINDS.items()))
    location = StringField("Location code", validators=[Length(max=32)],
                           description="Empty: the head's village.")
    head = StringField("Head (person ID or national ID)", validators=[Length(max=40)],
                       description="Required for a household; they also become the primary recipient.")


class MemberForm(Form):
    person = StringField("Person ID or national ID", validators=[DataRequired(), Length(max=40)])
    role = SelectField("Role", choices=[])


class RoleForm(Form):
    role = SelectField("Role", choices=[])


class MoveForm(Form):
    target = StringField("To household (code)", validators=[DataRequired(), Length(max=40)])
    role = SelectField("Role there", choices=[])
