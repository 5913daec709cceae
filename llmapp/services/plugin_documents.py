"""The documents of a knowledge-retrieval plugin: text or Markdown files its servers index and search.

Who may add or delete them is the plugin's rule (plugins.require_change: its owner or an admin). A
change reaches the running applications that use the plugin live, published before it is committed,
as every change of a plugin does (services/plugins.py).
"""

from flask_babel import gettext as _
from sqlalchemy.exc import IntegrityError

from .. import netguard
from ..extensions import db
from ..models import Plugin, PluginDocument, User
from . import Conflict, Invalid, NotFound, Taken
from .plugins import LIVE, publish_chains_before_commit, require_change, users_of

MAX_DOCUMENT_BYTES = 1024 * 1024  # under the 2 MB request limit (MAX_CONTENT_LENGTH)
MAX_PLUGIN_DOCUMENTS_BYTES = 20 * 1024 * 1024
DOCUMENT_SUFFIXES = (".txt", ".md", ".markdown", ".text")
MAX_DOCUMENT_NAME = 255
BLANK = b" \t\n\r\x0b\x0c"  # a document of only these is empty (bytes.strip's whitespace)
NOT_BLANK_TEXT_PATTERN = "[^" + "".join(f"\\u{c:04x}" for c in BLANK) + "]"  # the same, for the API's document


def add_document(plugin: Plugin, user: User, filename: str, data: bytes) -> PluginDocument:
    """A text or Markdown document, indexed by the servers of the applications using the plugin.

    :raise Forbidden: ``user`` may not change the plugin. :raise Conflict: not a knowledge-retrieval
        plugin. :raise Invalid: not UTF-8 text, empty, too large. :raise Taken: a name already there
        (also when a concurrent request took it).
    """
    require_change(plugin, user)
    if plugin.type != "knowledge_retrieval":  # the request is sound; the plugin is of another kind
        raise Conflict(_("Only a knowledge-retrieval plugin has documents."))
    name = _document_name(filename)
    if not name.lower().endswith(DOCUMENT_SUFFIXES):
        raise Invalid(
            _("Upload a text or Markdown file (%(suffixes)s).", suffixes=", ".join(DOCUMENT_SUFFIXES)), "document"
        )
    if not data.strip(BLANK):
        raise Invalid(_("“%(name)s” is empty.", name=name), "document")
    if len(data) > MAX_DOCUMENT_BYTES:
        raise Invalid(
            _("“%(name)s” is larger than %(size)s MiB.", name=name, size=MAX_DOCUMENT_BYTES // (1024 * 1024)),
            "document",
        )
    stored = sum(document.size for document in plugin.documents)
    if stored + len(data) > MAX_PLUGIN_DOCUMENTS_BYTES:
        stored_mib = f"{stored / (1024 * 1024):.1f}"
        raise Invalid(
            _(
                "A plugin holds at most %(limit)s MiB of documents; this one has %(stored)s MiB.",
                limit=MAX_PLUGIN_DOCUMENTS_BYTES // (1024 * 1024),
                stored=stored_mib,
            ),
            "document",
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Invalid(_("“%(name)s” is not UTF-8 text.", name=name), "document") from e
    if "\x00" in text:
        raise Invalid(_("“%(name)s” is not a text file.", name=name), "document")
    taken = Taken(
        {
            "document": [
                _("The plugin already has a document named “%(name)s”: delete it first to replace it.", name=name)
            ]
        }
    )
    if any(document.name == name for document in plugin.documents):
        raise taken
    document = PluginDocument(plugin=plugin, name=name, text=text, size=len(data))
    db.session.add(document)
    try:
        publish_chains_before_commit(users_of(plugin, LIVE), _("The document was not added"))  # flushes first
        db.session.commit()
    except IntegrityError as e:  # a concurrent request added one of that name
        db.session.rollback()
        raise taken from e
    return document


def _document_name(name) -> str:
    """The name as given, refused (not repaired) when it would break a log line or name a path.

    :raise Invalid: at "document"; the message never repeats the name.
    """
    if not isinstance(name, str) or not name:
        raise Invalid(_("Give the document a name."), "document")
    if netguard.has_control_characters(name):
        raise Invalid(_("A document's name can't contain line breaks, tabs or other control characters."), "document")
    if name != name.strip():
        raise Invalid(_("A document's name can't begin or end with a space."), "document")
    if "/" in name or "\\" in name:
        raise Invalid(
            _("A document's name can't contain / or \\: give the file's name without its folder."), "document"
        )
    if len(name) > MAX_DOCUMENT_NAME:
        raise Invalid(_("A document's name has at most %(count)s characters.", count=MAX_DOCUMENT_NAME), "document")
    return name


def delete_document(plugin: Plugin, user: User, document_id: int) -> None:
    """:raise Forbidden: ``user`` may not change the plugin. :raise NotFound: it has no such document."""
    require_change(plugin, user)
    document = next((d for d in plugin.documents if d.id == document_id), None)
    if document is None:
        raise NotFound(_("No such document."))
    plugin.documents.remove(document)
    publish_chains_before_commit(users_of(plugin, LIVE), _("The document was not deleted"))
    db.session.commit()
