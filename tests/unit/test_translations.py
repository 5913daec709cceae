"""Every message the code and the templates mark has a translation in every catalog, none of them fuzzy,
with the same placeholders: CI fails on a page that would show a Chinese reader English."""

from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parents[2]
CATALOGS = sorted((ROOT / "llmapp" / "translations").glob("*/LC_MESSAGES/messages.po"))
# As the Makefile's `make messages` extracts: _l (lazy), N_ and NP_ (marked, translated where shown) and
# counted(n, singular, plural) beside gettext's own.
KEYWORDS = {**DEFAULT_KEYWORDS, "_l": None, "N_": None, "NP_": ((1, "c"), 2), "counted": (2, 3)}


def extracted() -> Catalog:
    with open(ROOT / "babel.cfg") as config:
        method_map, options_map = parse_mapping_cfg(config)
    catalog = Catalog()
    for filename, lineno, message, _comments, context in extract_from_dir(
        str(ROOT), method_map, options_map, keywords=KEYWORDS
    ):
        catalog.add(message, locations=[(filename, lineno)], context=context)
    return catalog


@pytest.fixture(scope="module")
def messages() -> Catalog:
    return extracted()


def test_the_code_marks_messages_and_there_is_a_chinese_catalog(messages):
    assert len(messages) > 500  # the pages, forms and services, not a handful
    assert [path.parts[-3] for path in CATALOGS] == ["zh"]


@pytest.mark.parametrize("path", CATALOGS, ids=lambda path: path.parts[-3])
def test_every_message_is_translated_and_none_is_fuzzy(messages, path):
    with open(path, "rb") as file:
        catalog = read_po(file)
    missing, fuzzy, empty = [], [], []
    for message in messages:
        if not message.id:
            continue
        translated = catalog.get(message.id, context=message.context)
        where = f"{message.id!r} ({message.locations[0][0]}:{message.locations[0][1]})"
        if translated is None:
            missing.append(where)
        elif translated.fuzzy:
            fuzzy.append(where)
        elif not all(translated.string) if isinstance(translated.string, tuple) else not translated.string:
            empty.append(where)
    assert not missing, f"{len(missing)} messages have no entry in {path.name} (run `make messages`):\n" + "\n".join(
        missing[:40]
    )
    assert not fuzzy, "fuzzy translations (check and clear the flag):\n" + "\n".join(fuzzy)
    assert not empty, f"{len(empty)} messages are not translated yet:\n" + "\n".join(empty[:40])


@pytest.mark.parametrize("path", CATALOGS, ids=lambda path: path.parts[-3])
def test_translations_keep_every_placeholder(path):
    """A translation that drops or renames a %(name)s would fail at run time (KeyError) or lose a value."""
    with open(path, "rb") as file:
        catalog = read_po(file)
    problems = [f"{message.id!r}: {error}" for message, errors in catalog.check() for error in errors if message.id]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", CATALOGS, ids=lambda path: path.parts[-3])
def test_the_compiled_catalog_is_the_current_one(path):
    """The pages read the compiled .mo: one older than its .po shows yesterday's words (`make` compiles it)."""
    compiled = path.with_suffix(".mo")
    assert compiled.exists(), f"{compiled} is missing: run `make test` (or `make {compiled}`)"
    assert compiled.stat().st_mtime >= path.stat().st_mtime, f"{compiled} is older than {path.name}: run make"
