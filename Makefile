# The two commands of the README. Each creates .venv and installs what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install browser postgres demo test

install: $(STAMP)

# torch goes first, pinned: with no torch installed, a plain "torch>=..." requirement resolves
# to the newest CUDA build (several GB). constraints.txt pins every tested version.
$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[lora,test]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/rlhf demo

# The web UI's browser tests drive Debian's Chromium through Playwright (never `playwright install`,
# which downloads a browser).
browser:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# The feedback-store tests run on SQLite and on PostgreSQL: they start a throwaway cluster with
# Debian's server binaries (tests/_postgres.py), so the server package must be there; nothing is
# started or configured system-wide. Under CI=true a missing server fails the tests instead of
# skipping their PostgreSQL half.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

test: install browser postgres
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n 2 --dist loadgroup
