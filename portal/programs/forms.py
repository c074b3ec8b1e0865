from wtforms import (BooleanField, DateField, DecimalField, HiddenField, IntegerField, SelectField,
                     StringField, TextAreaField)
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from portal.forms import Form
from portal.ids import ID_MAX
from portal.programs.models import BENEFICIARY_KINDS, INSTITUTION_KINDS
from portal.registry.models import FIELD_TYPES


class ProgramForm(Form):
    code = StringField("Code", validators=[DataRequired(), Length(max=32)])
    name = StringField("Name", validators=[DataRequired(), Length(max=160)])
    description = TextAreaField("Description", validators=[Length(max=4000)])
    beneficiary_kind = SelectField("Beneficiaries", choices=list(BENEFICIARY_KINDS.items()))
    date_from = DateField("Coverage from", validators=[Optional()])
    date_to = DateField("Coverage to", validators=[Optional()])
    max_beneficiaries = IntegerField("Maximum beneficiaries", validators=[Optional(), NumberRange(min=0, max=ID_MAX)],
                                     description="Empty: no maximum. Potential, active and "
                                                 "suspended beneficiaries take a place.")
    institution_id = SelectField("Institution", coerce=int, validate_choice=False)
    scheme_id = SelectField("Scheme", coerce=int, validate_choice=False)
    # Checked by the service (a number, zero or more, under 10 billion): WTForms' NumberRange
    # fails on a signalling NaN ("sNaN") instead of refusing it.
    amount = DecimalField("Default benefit amount", places=2, validators=[Optional()])
    currency = StringField("Currency", validators=[Length(max=3)], description="e.g. MWK")
    version = HiddenField()  # the program's version the form was made from


class InstitutionForm(Form):
    code = StringField("Code", validators=[DataRequired(), Length(max=32)])
    name = StringField("Name", validators=[DataRequired(), Length(max=160)])
    kind = SelectField("Kind", choices=list(INSTITUTION_KINDS.items()))
    description = TextAreaField("Description", validators=[Length(max=4000)])


class SchemeForm(Form):
    code = StringField("Code", validators=[DataRequired(), Length(max=32)])
    name = StringField("Name", validators=[DataRequired(), Length(max=160)])
    description = TextAreaField("Description", validators=[Length(max=4000)])


class FieldForm(Form):
    name = StringField("Name", validators=[DataRequired(), Length(max=40)],
                       description="Lower-case letters, digits and _, e.g. school_name.")
    label = StringField("Label", validators=[DataRequired(), Length(max=80)])
    type = SelectField("Type", choices=[(t, t.title()) for t in FIELD_TYPES])
    required = BooleanField("Required")
    pattern = StringField("Pattern", validators=[Length(max=200)],
                          description="Optional regular expression the value must match.")
    choices = StringField("Choices", validators=[Length(max=2000)],
                          description="For a choice field: the values, separated by commas.")
    active = BooleanField("Active", default=True)


class CloseForm(Form):
    reason = StringField("Reason", validators=[Length(max=500)], default="Program closed")
    effective_date = DateField("Effective date", validators=[Optional()])


class StatusForm(Form):
    to_status = SelectField("New status", validate_choice=False)
    reason = StringField("Reason", validators=[DataRequired("Give the reason for the change."),
                                               Length(max=500)])
    effective_date = DateField("Effective date", validators=[Optional()])


class EnrolStatusForm(Form):
    status = SelectField("Enrol as", choices=[("potential", "Potential"), ("active", "Active")])
