"""The engine table's entries are whole (llmapp/engines/)."""

from llmapp import engines
from llmapp.engines.kind import EngineKind


def test_every_kind_in_the_table_is_complete():
    """Each kind says what it is and builds something (the table has no half-written entry)."""
    for name, kind in engines.ENGINES.items():
        assert kind.name == name and kind.label and kind.fields
        assert type(kind).build is not EngineKind.build and type(kind).recommend is not EngineKind.recommend
        assert all(field.column in engines.ENGINE_COLUMNS for field in kind.fields)
