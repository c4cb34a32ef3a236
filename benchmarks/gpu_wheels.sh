#!/usr/bin/env bash
# The wheels the accelerator machine needs and its image lacks: that machine (Python 3.12, x86-64)
# reaches no package index, so they travel with the call. Run here, on a machine with the registry,
# from the repository root:
#
#   bash benchmarks/gpu_wheels.sh [OUT_DIR]        # default .whl (git-ignored); then carry it
#
# Resolves this package's runtime requirements (pyproject.toml, not the test extras) in a fresh
# Python 3.12 environment under the image's own jax/jaxlib/flax/numpy
# (.ci/constraints-gpu-image.txt), so every version chosen works with them; keeps the packages
# that benchmarks/gpu_image_packages.txt does not list (the image's own stay: the code runs on
# its versions; pip, setuptools and wheel are among them); and downloads each one's manylinux
# x86-64 or pure-Python wheel for CPython 3.12, whatever this machine is. Writes
# OUT_DIR/MANIFEST (name==version, one a line). benchmarks/gpu_all.sh installs them with
#   python3 -m pip install --no-index --no-deps --target DIR .whl/*.whl
# Exits non-zero, naming the package, when a wheel cannot be had.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.whl}
py=$(command -v python3.12 2>/dev/null || true)
if [ -z "$py" ] || ! "$py" -V >/dev/null 2>&1; then
  py=$(PYENV_VERSION=$(pyenv versions --bare | grep '^3\.12' | tail -1) pyenv which python3.12)
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m venv "$tmp/venv"
pip=("$tmp/venv/bin/python" -m pip -q)
"$py" -c 'import tomllib
print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
  > "$tmp/requirements.txt"  # the package's own, not built: nothing is written here
"${pip[@]}" install -r "$tmp/requirements.txt" -c .ci/constraints-gpu-image.txt 2>&1 \
  | { grep -v 'is ignored' || true; }
# Names compared as pip normalises them (lower case, runs of - _ . as one -).
norm='{ name = tolower($1); gsub(/[-_.]+/, "-", name) }'
grep -v '^#' benchmarks/gpu_image_packages.txt | awk "$norm { print name }" | sort -u > "$tmp/image"
"$tmp/venv/bin/python" -m pip list --format=freeze --exclude-editable --disable-pip-version-check \
  | awk -F'==' "NR == FNR { image[\$0]; next } $norm !(name in image) { print name \"==\" \$2 }" \
      "$tmp/image" - | sort > "$tmp/MANIFEST"
[ -s "$tmp/MANIFEST" ] || { echo "gpu_wheels.sh: found no package the image lacks: pip list said" \
  "nothing?" >&2; exit 1; }
rm -rf "$out"; mkdir -p "$out"
platforms=()
for tag in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 \
           manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
while read -r spec; do
  if ! "${pip[@]}" download --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --abi cp312 --abi abi3 --abi none "${platforms[@]}" -d "$out" "$spec" \
      2>"$tmp/err"; then
    # Only a source distribution: build it here; a pure-Python wheel serves any machine.
    "${pip[@]}" wheel --no-deps -w "$tmp/built" "$spec" 2>>"$tmp/err" \
      && ls "$tmp/built" | grep -q -- '-none-any\.whl$' && mv "$tmp/built"/*.whl "$out"/ || {
        echo "gpu_wheels.sh: no CPython 3.12 x86-64 wheel for $spec:" >&2; tail -3 "$tmp/err" >&2
        exit 1; }
  fi
done < "$tmp/MANIFEST"
cp "$tmp/MANIFEST" "$out/MANIFEST"
echo "$(wc -l < "$out/MANIFEST") wheels the GPU image lacks, in $out ($(du -sh "$out" | cut -f1)):"
tr '\n' ' ' < "$out/MANIFEST"; echo
