# The two commands of the README. Each does all the set-up on a fresh machine with Python 3.11+.
#   make run    the platform on its embedded default (SQLite + a Redis it starts itself)
#   make test   the whole test suite (set DATABASE_URL / REDIS_URL to test on PostgreSQL / Redis)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint browser messages

# The pages' translations, compiled from the catalogs in the repository (llmapp/translations/*/messages.po).
CATALOGS := $(wildcard llmapp/translations/*/LC_MESSAGES/messages.po)
COMPILED := $(CATALOGS:.po=.mo)

run: $(VENV)/.installed $(COMPILED)
	$(BIN)/python app.py

test: $(VENV)/.installed $(COMPILED) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

%.mo: %.po $(VENV)/.installed
	$(BIN)/pybabel -q compile -i $< -o $@

# Messages to translate, from the code and the templates, into each catalog (then translate what is new).
messages: $(VENV)/.installed
	$(BIN)/pybabel -q extract -F babel.cfg -k _l -k N_ -k NP_:1c,2 -k counted:2,3 -o llmapp/translations/messages.pot --no-location --omit-header .
	$(BIN)/pybabel -q update -i llmapp/translations/messages.pot -d llmapp/translations --no-fuzzy-matching --ignore-obsolete

# The browser tests drive Debian's chromium (never a downloaded browser build), with a font for the
# Chinese pages' screenshots.
browser:
	@(command -v chromium && fc-list :lang=zh | grep -q .) >/dev/null 2>&1 || scripts/install-chromium

$(VENV)/.installed: requirements.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	touch $@
