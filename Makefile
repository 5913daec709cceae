# The two commands of the README. Each does all the set-up on a fresh machine with Python 3.11+.
#   make run    the platform on its embedded default (SQLite + a Redis it starts itself)
#   make test   the whole test suite (set DATABASE_URL / REDIS_URL to test on PostgreSQL / Redis)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint browser

run: $(VENV)/.installed
	$(BIN)/python app.py

test: $(VENV)/.installed browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The browser tests drive Debian's chromium (never a downloaded browser build).
browser:
	@command -v chromium >/dev/null 2>&1 || scripts/install-chromium

$(VENV)/.installed: requirements.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	touch $@
