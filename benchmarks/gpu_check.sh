#!/usr/bin/env bash
# Run benchmarks/gpu_check.py on a bare GPU machine where sceneforge is not installed and
# cannot be pip-installed: a temporary folder gets a `sceneforge/` package made of symlinks
# (each entry of the repo's sceneforge/ folder, plus recon/, fields/, inpaint/, stylize/ as
# pyproject's [tool.setuptools] package-dir maps them) and goes first on PYTHONPATH.
#
#   bash benchmarks/gpu_check.sh [gpu_check.py options, e.g. --bal-dir outputs/bal]
#
# PYTHON (default python3) picks the interpreter; the JSON summary goes to
# "${OUT:-.}/gpu_check.json" and one JSON row per section to stdout. Exit status: gpu_check's.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
SHIM="$(mktemp -d "${TMPDIR:-/tmp}/sceneforge-shim.XXXXXX")"
trap 'rm -rf "$SHIM"' EXIT

# sub-packages that live outside sceneforge/ (pyproject's package-dir; read with tomllib when
# the interpreter has it, else the mapping as of this script)
MAPPING="$("$PYTHON" - "$REPO/pyproject.toml" <<'EOF' 2>/dev/null || true
import sys

try:
    import tomllib
except ImportError:  # Python < 3.11
    sys.exit(1)
with open(sys.argv[1], "rb") as f:
    dirs = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
for name, folder in dirs.items():
    if name.startswith("sceneforge.") and name.count(".") == 1 and folder != name.replace(".", "/"):
        print(name.split(".", 1)[1], folder)
EOF
)"
if [ -z "$MAPPING" ]; then
    MAPPING="$(printf '%s\n' "recon recon" "fields fields" "inpaint inpaint" "stylize stylize")"
fi

mkdir "$SHIM/sceneforge"
for entry in "$REPO"/sceneforge/*; do
    name="$(basename "$entry")"
    [ "$name" = "__pycache__" ] && continue
    ln -s "$entry" "$SHIM/sceneforge/$name"
done
while read -r sub folder; do
    [ -n "$sub" ] || continue
    if [ ! -d "$REPO/$folder" ]; then
        echo "gpu_check.sh: package-dir folder $REPO/$folder is missing" >&2
        exit 2
    fi
    ln -sfn "$REPO/$folder" "$SHIM/sceneforge/$sub"
done <<<"$MAPPING"

# run from the caller's folder: relative paths in "$@" (e.g. --bal-dir) keep their meaning
OUT_DIR="${OUT:-.}"
status=0
PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" "$REPO/benchmarks/gpu_check.py" \
    --json --out "$OUT_DIR/gpu_check.json" "$@" || status=$?
exit "$status"
