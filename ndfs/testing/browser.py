"""A real headless Chromium for tests and screenshots: Debian's ``chromium``, software WebGL (SwiftShader).

:func:`headless_chromium` opens a URL in a fresh profile and yields the process;
on exit it is terminated and its profile removed. The flags are those that let
it run as root on a closed network (no sandbox, no background networking,
updates or sync) and draw WebGL without a GPU (ANGLE on SwiftShader).
:func:`chromium_unavailable` gives the reason it cannot run here, or None.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from typing import Iterator

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu-sandbox", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--ignore-gpu-blocklist", "--remote-debugging-port=0")


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_unavailable() -> str | None:
    if chromium_binary() is None:
        return "chromium is not installed (apt-get install chromium; bash scripts/setup.sh test does it)"
    return None


@contextlib.contextmanager
def headless_chromium(url: str, size=(1000, 700), log_path=None) -> Iterator[subprocess.Popen]:
    """Chromium showing ``url`` headless at ``size`` (its messages go to ``log_path``, else nowhere)."""
    binary = chromium_binary()
    if binary is None:
        raise RuntimeError(chromium_unavailable())
    profile = tempfile.mkdtemp(prefix="ndfs-chromium-")
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", url],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if log is not subprocess.DEVNULL:
            log.close()
        shutil.rmtree(profile, ignore_errors=True)
