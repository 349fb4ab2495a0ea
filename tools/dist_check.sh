#!/usr/bin/env bash
# `make dist-check`: build the wheel, install it in fresh venvs away from the checkout, and run it.
#   1. the full install (runtime + export, torch 2.13.0 CPU): `dartrt generate` on the bundled model,
#      then `dartrt export` of it to a package;
#   2. the runtime-only install (no torch): `dartrt generate PKG` and `dartrt.runtime.generate` on that
#      package, and the one-line hint of a command that needs the export extra.
set -euo pipefail
python=${PYTHON:-python3}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say() { printf 'dist-check: %s\n' "$*"; }

say "building the wheel from the files a clean clone would have"
mkdir -p "$work/src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
   if [ -f "$f" ]; then cp --parents "$f" "$work/src"; fi; done)
"$repo/.venv/bin/python" -m pip wheel "$work/src" --no-deps --no-build-isolation -q -w "$work/dist"
wheel=$(ls "$work"/dist/dartrt-*.whl)
cd "$work"

say "full install (torch 2.13.0 CPU + the export extra) in $work/full"
"$python" -m venv full
full/bin/pip install -q --upgrade pip
full/bin/pip install -q torch==2.13.0 "$wheel[cpu,export]"
full/bin/dartrt generate -c 0 --n 1 -o out-bundled
test -f out-bundled/grid.png
full/bin/dartrt export -o pkg

say "runtime-only install (no torch) in $work/light"
"$python" -m venv light
light/bin/pip install -q --upgrade pip
light/bin/pip install -q "$wheel[cpu]"
light/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
light/bin/dartrt generate pkg -c 1 --n 2 -o out-light
test -f out-light/grid.png
light/bin/python -c "from dartrt import runtime; images = runtime.generate('pkg', [2], seed=0); print('api:', images[0].size)"
if light/bin/dartrt export -o other 2> hint.txt; then say "export ran without torch?"; exit 1; fi
grep -q "dartrt\[export\]" hint.txt
say "ok: $(basename "$wheel")"
