from wtforms import BooleanField, EmailField, PasswordField, SelectField, StringField
from wtforms.validators import InputRequired, ValidationError

from ..forms import PlatformForm
from ..services import users


class NewUserForm(PlatformForm):
    """The rules (an email, a long enough password, not taken) are the users service's; it says which field."""

    email = EmailField("Email", validators=[InputRequired(users.REQUIRED["email"])])
    password = PasswordField("Password", validators=[InputRequired(users.REQUIRED["password"])])
    admin = BooleanField("Admin (sees and manages everything)")


class ChangePasswordForm(PlatformForm):
    current = PasswordField("Current password", validators=[InputRequired("Type your current password.")])
    new = PasswordField("New password", validators=[InputRequired("Type a new password.")])
    confirm = PasswordField("New password again", validators=[InputRequired("Type the new password again.")])

    def validate_confirm(self, field):
        if field.data != self.new.data:
            raise ValidationError("The two new passwords differ.")


class NewTokenForm(PlatformForm):
    """A personal access token; its rules (name, expiry bounds) are the access-tokens service's."""

    name = StringField("Name", validators=[InputRequired("Give the token a name, e.g. the script that uses it.")])
    expires_days = SelectField(
        "Expires",
        choices=[("30", "in 30 days"), ("90", "in 90 days"), ("365", "in a year"), ("", "never")],
        default="90",
    )
