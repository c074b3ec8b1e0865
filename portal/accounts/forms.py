from wtforms import BooleanField, EmailField, PasswordField, SelectMultipleField, StringField
from wtforms.validators import DataRequired, Email, EqualTo, Length, Optional
from wtforms.widgets import CheckboxInput, ListWidget

from portal.forms import Form


class MultiCheckboxField(SelectMultipleField):
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class LoginForm(Form):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=200)])


class PasswordForm(Form):
    current = PasswordField("Current password", validators=[DataRequired()])
    password = PasswordField("New password", validators=[DataRequired(), Length(min=10, max=200)])
    confirm = PasswordField("Repeat new password", validators=[EqualTo("password", "The passwords differ.")])


class UserForm(Form):
    email = EmailField("Email", validators=[DataRequired(), Email(check_deliverability=False), Length(max=254)])
    name = StringField("Name", validators=[DataRequired(), Length(max=120)])
    password = PasswordField("Password", validators=[Optional(), Length(min=10, max=200)],
                             description="At least 10 characters. Leave empty to keep the current one.")
    roles = MultiCheckboxField("Roles", coerce=int)
    all_locations = BooleanField("Sees all locations")
    locations = StringField("Location codes", validators=[Length(max=2000)],
                            description="Codes separated by commas; the user sees these and everything below.")


class RoleForm(Form):
    permissions = MultiCheckboxField("Permissions")
