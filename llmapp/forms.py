"""The base of every form of the platform."""

from flask_wtf import FlaskForm
from wtforms import Field, FieldList, FormField

NUL_ERROR = "Contains a NUL character, which can't be stored or passed on."


def _fields(fields) -> list[Field]:
    """Every leaf field, inside lists and sub-forms too."""
    found = []
    for field in fields:
        if isinstance(field, FieldList):
            found += _fields(field.entries)
        elif isinstance(field, FormField):
            found += _fields(field.form)
        else:
            found.append(field)
    return found


class PlatformForm(FlaskForm):
    """A FlaskForm that refuses NUL characters before any validator (or database query) sees them:
    PostgreSQL can't store them and no process environment can hold them."""

    def validate(self, extra_validators=None) -> bool:
        refused = False
        for top in self:
            for field in _fields([top]):
                if isinstance(field.data, str) and "\x00" in field.data:
                    field.errors = [NUL_ERROR]
                    top.errors = top.errors if field is top else [NUL_ERROR]  # so form.errors shows it
                    refused = True
        return not refused and super().validate(extra_validators)
