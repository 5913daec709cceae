from flask_babel import gettext as _
from wtforms import BooleanField, EmailField, HiddenField, PasswordField, SelectField, StringField
from wtforms.validators import InputRequired, ValidationError

from ..forms import PlatformForm
from ..i18n import LANGUAGES, _l
from ..services import users


class NewUserForm(PlatformForm):
    """The rules (an email, a long enough password, not taken) are the users service's; it says which field."""

    email = EmailField(_l("Email"), validators=[InputRequired(users.REQUIRED["email"])])
    password = PasswordField(_l("Password"), validators=[InputRequired(users.REQUIRED["password"])])
    admin = BooleanField(_l("Admin (sees and manages everything)"))


class ChangePasswordForm(PlatformForm):
    current = PasswordField(_l("Current password"), validators=[InputRequired(_l("Type your current password."))])
    new = PasswordField(_l("New password"), validators=[InputRequired(_l("Type a new password."))])
    confirm = PasswordField(_l("New password again"), validators=[InputRequired(_l("Type the new password again."))])

    def validate_confirm(self, field):
        if field.data != self.new.data:
            raise ValidationError(_("The two new passwords differ."))


class NewTokenForm(PlatformForm):
    """A personal access token; its rules (name, expiry bounds) are the access-tokens service's."""

    name = StringField(
        _l("Name"), validators=[InputRequired(_l("Give the token a name, e.g. the script that uses it."))]
    )
    expires_days = SelectField(
        _l("Expires"),
        choices=[("30", _l("in 30 days")), ("90", _l("in 90 days")), ("365", _l("in a year")), ("", _l("never"))],
        default="90",
    )


class LanguageForm(PlatformForm):
    """The language of the pages (the Account page's choice); it posts to auth.language, which saves it.
    Each language is named in its own language; "" follows the browser's Accept-Language."""

    language = SelectField(_l("Language"), choices=[("", _l("Follow the browser")), *LANGUAGES.items()], default="")
    next = HiddenField()
