from flask_wtf.file import FileField, FileRequired
from wtforms import BooleanField, RadioField, SelectField, StringField
from wtforms.validators import Length, Optional

from portal.forms import Form
from portal.imports.models import DUPLICATE_POLICIES

DATE_ORDERS = [("", "Year first only (YYYY-MM-DD), or unambiguous dates"),
               ("day", "Day first (31/12/1990)"), ("month", "Month first (12/31/1990)")]
ENROL_STATUSES = [("potential", "Potential"), ("active", "Active")]


class UploadForm(Form):
    file = FileField("File (.csv or .xlsx)", validators=[FileRequired("Choose a file to upload.")])
    duplicate_policy = RadioField(
        "A person whose national ID is already registered",
        choices=list(DUPLICATE_POLICIES.items()), default="error")
    date_order = SelectField("Dates written as", choices=DATE_ORDERS, default="")
    program_id = SelectField("Enrol the imported people into", choices=[("", "No program")],
                             default="", validators=[Optional()])
    enrol_status = SelectField("with the status", choices=ENROL_STATUSES, default="potential")


class ReuploadForm(Form):
    file = FileField("File of fixed rows", validators=[FileRequired("Choose the fixed file.")])


class ReplaceForm(Form):
    field = SelectField("Column", choices=[])
    match = SelectField("Find", choices=[("cell", "Cells equal to"), ("part", "Text within cells")],
                        default="cell")
    find = StringField("Text", validators=[Length(max=200)],
                       description="Empty finds the empty cells.")
    replace = StringField("Replace with", validators=[Length(max=200)])


class MappingForm(Form):
    """The column selects are added per file header by the view."""

    save_as = StringField("Save this mapping as", validators=[Length(max=80)],
                          description="Files with the same columns will use it next time.")


class ImportForm(Form):
    only_if_clean = BooleanField("Only if no row is left to fix")
