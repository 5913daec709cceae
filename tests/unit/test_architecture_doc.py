"""docs/ARCHITECTURE.md stays true to the tree: every repository path it names exists, the headings
that code comments point to are there, and nothing in the code points outside the repository.

Which backticked tokens are repository paths (the rule, precisely):

- only inline code spans (`...`) outside fenced code blocks (the diagram is a picture, not a list
  of paths);
- a span is a path candidate when it contains "/" or ends in one of PATH_SUFFIXES;
- it is not one when it contains whitespace (a command: `python -I -u`), "://" (a URL), "*" (a glob),
  "<", ">", "{" or "}" (a placeholder: `instance/run/<id>.json`), ":" (a Redis key `llmapp:...`, a
  queue `host:<name>`), "…" or "..." (an elision), or "=" (an assignment); when it starts with "$" (a
  variable), "/" (an HTTP path such as `/v1/models`, or a path outside the repository) or "." followed
  by a dot (a relative path leaving the repository); or when it is a media type (`application/...`,
  `text/...`);
- a candidate names a file or folder relative to the repository root (a trailing "/" marks a folder)
  and must exist there.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
PATH_SUFFIXES = (".py", ".md", ".html", ".json", ".toml", ".txt", ".cfg")
NOT_A_PATH = re.compile(r"\s|://|[*<>{}:=]|…|\.\.\.")
MEDIA_TYPES = ("application/", "text/", "image/", "multipart/")
# Headings other files point to (code comments and docstrings name them): renaming one breaks them.
REQUIRED_HEADINGS = ("## The request pipeline", "## Where rules live", "## Plugins")
# Code must not point to documents outside this repository. Spelled in two parts so that this file,
# which is scanned too, does not hold them.
FORBIDDEN = ("DESIGN" + ".md", ".." + "/shared")
SCANNED = ("llmapp", "jobs", "tests", "templates", "app.py")
SKIPPED_DIRS = {"__pycache__", ".pytest_cache"}


def inline_code(markdown: str) -> list[str]:
    """The inline code spans of ``markdown``, outside fenced code blocks."""
    outside, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            outside.append(line)
    # A span may run across a line break, as in Markdown (it then holds whitespace: never a path).
    return re.findall(r"`([^`]+)`", "\n".join(outside))


def is_repository_path(token: str) -> bool:
    if not ("/" in token or token.endswith(PATH_SUFFIXES)):
        return False
    if NOT_A_PATH.search(token) or token.startswith(("$", "/", "..")) or token.startswith(MEDIA_TYPES):
        return False
    return True


def test_the_rule_tells_paths_from_other_tokens():
    paths = ["llmapp/services/lifecycle.py", "README.md", "llmapp/api/", ".ci/run", "app.py", "jobs/"]
    others = [
        "https://example.com/a.md", "$VIRTUAL_ENV/bin", "tests/test_*.py", "/v1/chat/completions",
        "llmapp:logs:<id>", "host:<name>", "instance/run/<id>.json", "python -I -u", "text/event-stream",
        "application/problem+json", "../elsewhere/notes.md", "jobs.deploy.deploy_application", "STAGES",
        "SQLite | PostgreSQL", "spec.validate(json=…)",
    ]  # fmt: skip
    assert [p for p in paths if not is_repository_path(p)] == []
    assert [o for o in others if is_repository_path(o)] == []


def test_every_repository_path_the_page_names_exists():
    paths = sorted({token for token in inline_code(DOC.read_text(encoding="utf-8")) if is_repository_path(token)})
    assert len(paths) >= 40, f"only {len(paths)} repository paths found: is the rule still reading the page?"
    missing = [path for path in paths if not (ROOT / path.rstrip("/")).exists()]
    assert missing == [], f"docs/ARCHITECTURE.md names paths that do not exist: {missing}"


def test_the_headings_code_points_to_are_there():
    headings = {line.strip() for line in DOC.read_text(encoding="utf-8").splitlines() if line.startswith("#")}
    assert [h for h in REQUIRED_HEADINGS if h not in headings] == []


def _scanned_files():
    for name in SCANNED:
        top = ROOT / name
        if top.is_file():
            yield top
            continue
        for path in top.rglob("*"):
            if path.is_file() and not SKIPPED_DIRS.intersection(path.relative_to(ROOT).parts):
                yield path


def test_no_code_points_outside_the_repository():
    offenders, scanned = [], 0
    for path in _scanned_files():
        scanned += 1
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # a binary file (an image, a compiled file): not something a person reads
        offenders += [f"{path.relative_to(ROOT)}: {word}" for word in FORBIDDEN if word in text]
    assert scanned > 50, f"only {scanned} files scanned: are the folders still there?"
    assert offenders == [], "point to docs/ARCHITECTURE.md (or the README) instead: " + "; ".join(offenders)
