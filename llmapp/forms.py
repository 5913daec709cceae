"""The base of every form of the platform, and what forms share: the service's rules rendered at fields."""

from collections.abc import Callable

from flask_wtf import FlaskForm
from wtforms import Field, FieldList, FloatField, FormField, IntegerField

from .services import NUL_ERROR, FieldErrors


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


class _EmptyIsNone:
    """A number typed in a form: empty is None (the service says whether that is allowed); text that is
    not a number is the form's one error of its own."""

    def process_formdata(self, valuelist):
        if valuelist and not valuelist[0].strip():
            self.data = None
            return
        super().process_formdata(valuelist)


class IntegerInput(_EmptyIsNone, IntegerField):
    pass


class DecimalInput(_EmptyIsNone, FloatField):
    pass


class PlatformForm(FlaskForm):
    """A FlaskForm that refuses NUL characters before any validator (or database query) sees them:
    PostgreSQL can't store them and no process environment can hold them.

    Forms whose rules live in a service (docs/ARCHITECTURE.md, "Where rules live") parse what was
    typed and call ``judged(service.check)``: the service's errors come back at their fields, in the
    words the CLI and the API give too.
    """

    def validate(self, extra_validators=None) -> bool:
        refused = False
        for top in self:
            for field in _fields([top]):
                if isinstance(field.data, str) and "\x00" in field.data:
                    field.errors = [NUL_ERROR]
                    top.errors = top.errors if field is top else [NUL_ERROR]  # so form.errors shows it
                    refused = True
        return not refused and super().validate(extra_validators)

    def service_data(self) -> dict:
        """What the service takes: the fields' values (forms with lists of rows say more)."""
        return {name: field.data for name, field in self._fields.items() if name != "csrf_token"}

    def judged(self, rules: Callable[[dict], object]) -> bool:
        """Parsed here, then judged by the service's ``rules``; every error ends up at its field."""
        parsed = self.validate()
        try:
            rules(self.service_data())
        except FieldErrors as e:
            self.show_errors(e.errors)
            return False
        return parsed

    def show_errors(self, errors: dict[str, list[str]]) -> None:
        """The service's errors at their fields ("env.3.name": row 3's name), except where the form already
        has one (text that is not a number is not also "required"); errors of no field, above the form."""
        for name, messages in errors.items():
            field = self._field_at(name)
            if field is None:
                self.form_errors.extend(messages)
            elif isinstance(field, FieldList) or not field.errors:
                field.errors = [*field.errors, *messages]
        for field in self._fields.values():
            if isinstance(field, FieldList):  # it keeps its rows' errors as found when it validated
                rows = [entry.errors for entry in field.entries]
                own = [error for error in field.errors if isinstance(error, str)]
                field.errors = (rows if any(rows) else []) + own

    def _field_at(self, name: str) -> Field | None:
        parts = name.split(".")
        field = self._fields.get(parts[0])
        if isinstance(field, FieldList) and len(parts) == 3 and parts[1].isdigit():
            index = int(parts[1])
            if index < len(field.entries) and isinstance(field.entries[index], FormField):
                return field.entries[index].form._fields.get(parts[2]) or field
            return field
        return field if len(parts) == 1 or isinstance(field, FieldList) else None
