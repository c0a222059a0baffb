#!/usr/bin/env bash
# Install what ndfs needs on a Debian-like machine: fuse3 (apt) and the package in ./.venv.
# Usage: bash scripts/setup.sh [EXTRAS]    e.g. bash scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

say() { printf 'setup: %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=""
need_apt() {
  local pkgs=()
  for arg in "$@"; do [[ "$arg" == -* ]] || pkgs+=("$arg"); done
  say "installing ${pkgs[*]} with apt-get (system packages; usually 10-60 s)"
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v fusermount3 >/dev/null || need_apt fuse3
command -v tiffinfo >/dev/null || need_apt libtiff-tools || echo "note: tiffinfo unavailable; its checks will be skipped"
if [[ ",$extras," == *",test,"* ]]; then  # what tests/test_fiji.py opens a mount with: headless ImageJ, GDAL, ImageMagick
  { command -v java >/dev/null && [ -e /usr/share/java/ij.jar ]; } || need_apt --no-install-recommends default-jre-headless libij-java
  command -v gdalinfo >/dev/null || need_apt --no-install-recommends gdal-bin
  identify -version 2>/dev/null | grep -q ImageMagick || need_apt --no-install-recommends imagemagick
  # tests/test_view.py: a real browser draws ndfs view (headless, software WebGL)
  command -v chromium >/dev/null || need_apt --no-install-recommends chromium
fi

if [ ! -x .venv/bin/python ]; then
  say "creating the virtual environment ./.venv"
  python3 -m venv .venv 2>/dev/null || { need_apt python3-venv && python3 -m venv .venv; }
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
if [ -x .venv/bin/ndfs ]; then took="a few seconds"; else took="about 1-2 minutes the first time"; fi
say "installing ndfs${extras:+[$extras]} and its Python dependencies into ./.venv with pip ($took)"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e "$spec"
say "done: $(.venv/bin/ndfs --version) in ./.venv (. .venv/bin/activate puts ndfs on your PATH)"
