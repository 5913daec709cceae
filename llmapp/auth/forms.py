from wtforms import BooleanField, EmailField, PasswordField
from wtforms.validators import DataRequired, Length

from ..forms import PlatformForm


class LoginForm(PlatformForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired()])
    remember = BooleanField("Keep me logged in")
