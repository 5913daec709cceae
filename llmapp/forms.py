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
        nul = [f for f in _fields(self) if isinstance(f.data, str) and "\x00" in f.data]
        if nul:
            for field in nul:
                field.errors = [NUL_ERROR]
            return False
        return super().validate(extra_validators)
