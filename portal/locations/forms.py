from flask_wtf.file import FileField, FileRequired
from wtforms import SelectField, StringField
from wtforms.validators import DataRequired, Length

from portal.forms import Form
from portal.locations.models import KINDS


class LocationForm(Form):
    code = StringField("Code", validators=[DataRequired(), Length(max=32)])
    name = StringField("Name", validators=[DataRequired(), Length(max=120)])
    kind = SelectField("Type", choices=[(k, k.title()) for k in KINDS])
    parent_code = StringField("Parent code", validators=[Length(max=32)],
                              description="Empty for a region.")


class LocationImportForm(Form):
    file = FileField("CSV file", validators=[FileRequired("Choose a CSV file.")],
                     description="Columns: code, name, type, parent code. Any order, header in any case.")
