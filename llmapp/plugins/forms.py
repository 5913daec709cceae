from wtforms import BooleanField, SelectField, StringField, TextAreaField

from ..forms import PlatformForm
from ..runtime import plugins as plugin_types


class PluginForm(PlatformForm):
    """A plugin's own fields (CSRF, NUL refused); its configuration comes from the type's schema
    (config_form.py), and the rules from the plugins service."""

    name = StringField("Name")
    type = SelectField("Type", choices=[(t.name, t.title) for t in plugin_types.TYPES.values()])
    description = TextAreaField("Description")
    version = StringField("Version")
    enabled = BooleanField("Enabled", default=True)
    published = BooleanField("Published: every user may attach it (admins only)")
