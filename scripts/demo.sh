#!/usr/bin/env bash
# Set up ndfs, write the demo dataset, and mount it at ./mnt.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ndfs demo
mkdir -p mnt
if grep -q " $(pwd)/mnt " /proc/mounts; then .venv/bin/ndfs umount mnt; fi
.venv/bin/ndfs mount mnt
cat <<TXT

The demo data are mounted at ./mnt. Try:
  ls -v mnt/local/demo/em/0/z | head              one TIFF per z-slice
  .venv/bin/python -c "import tifffile; print(tifffile.imread('mnt/local/demo/em/0/z/64.tif').shape)"
  cp mnt/local/demo/em/0/z/64.tif /tmp/            a normal TIFF file
  open mnt/local/demo/em/0/stack.tif in Fiji       the whole volume, calibrated in nm
Stop with: .venv/bin/ndfs umount mnt
TXT
