from wtforms import BooleanField, EmailField, PasswordField
from wtforms.validators import InputRequired, Length, ValidationError

from ..forms import PlatformForm


class NewUserForm(PlatformForm):
    """The rules (an email, a long enough password, not taken) are the users service's; it says which field."""

    email = EmailField("Email", validators=[InputRequired("Give the user's email."), Length(max=254)])
    password = PasswordField("Password", validators=[InputRequired("Give a password (at least 8 characters).")])
    admin = BooleanField("Admin (sees and manages everything)")


class ChangePasswordForm(PlatformForm):
    current = PasswordField("Current password", validators=[InputRequired("Type your current password.")])
    new = PasswordField("New password", validators=[InputRequired("Type a new password.")])
    confirm = PasswordField("New password again", validators=[InputRequired("Type the new password again.")])

    def validate_confirm(self, field):
        if field.data != self.new.data:
            raise ValidationError("The two new passwords differ.")
