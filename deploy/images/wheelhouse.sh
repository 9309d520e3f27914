#!/usr/bin/env bash
# Fill build/wheelhouse (inside the build context) with wheels of every pinned runtime
# dependency in pyproject.toml and of the build backend, plus requirements.txt listing them.
# The image then installs with `pip install --no-index --find-links`, so a build is offline and
# reproducible. Wheels are built once per set of pins and kept in the cache
# ($GRIDLEDGER_CACHE, default ~/.cache/gridledger); pip needs the same Python minor version
# and libc family as the image (3.11, glibc), which the project's .venv has.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
CACHE=${GRIDLEDGER_CACHE:-$HOME/.cache/gridledger}
OUT=build/wheelhouse

reqs=$("$PYTHON" - <<'PY'
import tomllib
doc = tomllib.load(open("pyproject.toml", "rb"))
for line in doc["build-system"]["requires"] + doc["project"]["dependencies"]:
    print(line)
PY
)
key=$(printf '%s\n' "$reqs" "$("$PYTHON" -c 'import sys, platform; print(sys.version_info[:2], platform.machine())')" \
      | sha256sum | cut -c1-16)
store="$CACHE/wheelhouse-$key"
if [ ! -f "$store/requirements.txt" ]; then
  echo "building the wheelhouse for the pinned dependencies into $store ..."
  rm -rf "$store.tmp" && mkdir -p "$store.tmp"
  printf '%s\n' "$reqs" > "$store.tmp/requirements.txt"
  "$PYTHON" -m pip wheel --quiet --wheel-dir "$store.tmp" -r "$store.tmp/requirements.txt" \
    >"$store.tmp.log" 2>&1 || { tail -20 "$store.tmp.log" >&2; exit 1; }
  rm -rf "$store" && mv "$store.tmp" "$store"
else
  echo "wheelhouse cached: $store"
fi
rm -rf "$OUT" && mkdir -p "$(dirname "$OUT")"
cp -a "$store" "$OUT"
