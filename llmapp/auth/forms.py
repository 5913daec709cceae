from wtforms import BooleanField, EmailField, PasswordField
from wtforms.validators import DataRequired, Length

from ..forms import PlatformForm
from ..i18n import _l


class LoginForm(PlatformForm):
    email = EmailField(_l("Email"), validators=[DataRequired(), Length(max=254)])
    password = PasswordField(_l("Password"), validators=[DataRequired()])
    remember = BooleanField(_l("Keep me logged in"))
