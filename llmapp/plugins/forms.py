from wtforms import BooleanField, SelectField, StringField, TextAreaField

from ..forms import PlatformForm
from ..i18n import _l
from ..runtime import plugins as plugin_types


class PluginForm(PlatformForm):
    """A plugin's own fields (CSRF, NUL refused); its configuration comes from the type's schema
    (config_form.py), and the rules from the plugins service."""

    name = StringField(_l("Name"))
    type = SelectField(_l("Type"), choices=[(t.name, t.title) for t in plugin_types.TYPES.values()])
    description = TextAreaField(_l("Description"))
    version = StringField(_l("Version"))
    enabled = BooleanField(_l("Enabled"), default=True)
    published = BooleanField(_l("Published: every user may attach it (admins only)"))
