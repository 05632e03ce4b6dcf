# Sourced by scripts/run and scripts/test: make .venv and install cc-execute into it, unless an
# install for the same pyproject.toml is already there (a stamp in .venv), so reruns start at once.
# Usage: ensure_venv ""      (the package)   or   ensure_venv "[dev]"   (with the test extras)
ensure_venv() {
  local extras="$1" python="${PYTHON:-python3}" want stamp
  if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
  fi
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  stamp=".venv/.cc-execute-installed${extras}"
  # The dev install includes the plain one.
  if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] || { [ -z "$extras" ] && [ "$(cat ".venv/.cc-execute-installed[dev]" 2>/dev/null)" = "$want" ]; }; then
    return 0
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}" >/dev/null
  echo "$want" > "$stamp"
}
