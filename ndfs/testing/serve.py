"""``ndfs serve`` in a child process for tests and benchmarks, started and stopped as a user would."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterator


@dataclass
class Served:
    """A running ``ndfs serve`` child: its base URL (``http://127.0.0.1:PORT``) and process."""

    url: str
    proc: subprocess.Popen


@contextlib.contextmanager
def served(protocol: str, store, *extra, env: dict | None = None, stderr=subprocess.PIPE,
           check_exit: bool = True, config=None) -> Iterator[Served]:
    """Run ``ndfs serve --protocol PROTOCOL --store STORE --port 0 EXTRA...``; yield it once it listens.
    ``store=None`` serves a configured remote instead (``config=`` the ndfs.toml, ``--remote NAME`` in EXTRA).

    On exit the child gets SIGTERM; with ``check_exit`` it must then exit with
    0 within 10 s (a clean shutdown), else AssertionError. A child that prints no
    start line is killed and its error output is in the AssertionError.
    """
    source = ["--store", str(store)] if store is not None else []  # None: --remote NAME (and --config) in extra
    head = ["--config", str(config)] if config is not None else []
    cmd = [sys.executable, "-m", "ndfs", *head, "serve", "--protocol", protocol, *source, "--port", "0",
           *map(str, extra)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, text=True,
                            env=env)
    try:
        line = proc.stdout.readline()  # printed once listening, or nothing if it died
        m = re.search(r" at (http://[^/\s]+)", line)
        if not m:
            proc.kill()
            why = proc.stderr.read() if proc.stderr is not None else "(error output went to the given file)"
            raise AssertionError(f"ndfs serve --protocol {protocol} did not start: {line.strip()!r} {why}")
        yield Served(m.group(1), proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            code = None
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    if check_exit and code != 0:
        raise AssertionError(f"ndfs serve --protocol {protocol} exited with {code} after SIGTERM")


def memory(pid: int) -> dict[str, int]:
    """A live process's resident memory now (``VmRSS``) and its peak so far (``VmHWM``), in bytes.

    Raises OSError once the process is gone (its ``/proc`` entry with it).
    """
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out
