"""Every shell and Python block of the README runs as written, in order, against the demo.

The README is what a new user runs first, so its ```sh and ```python blocks run here the way the README
says to run them: from a folder holding the repository's ndfs.toml, after `ndfs demo`, with the
environment's bin folder first on PATH (`. .venv/bin/activate`), and for the blocks that use ./mnt with
the demo mounted there by `ndfs mount mnt` (what `bash scripts/demo.sh` does once it has installed
everything). ```toml blocks and plain ``` sketches are not commands. The README's conventions, checked
here:

- `<!-- not run by tests/test_readme.py: REASON -->` on the line before a block skips it, for that reason;
- `# -> TEXT` after a command, or after a top-level print(...), is what it prints ("..." at the end: and
  more);
- `# TOKEN: ...` on a line whose command holds TOKEN marks a placeholder; FILL below fills it in;
- `ndfs serve` runs in the background until the next section, on a free port that stands in for its port
  number in that section's blocks, and must stop with status 0 on SIGTERM;
- a Python block that imports ndio runs with ndio 1.1.5, in the virtualenv tests/test_neurodata.py makes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ndfs.testing.mount import fuse_unavailable, is_mounted, wait_until

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SKIP = re.compile(r"<!-- not run by tests/test_readme\.py: (.*) -->")
OUTPUT = "# -> "
MARK = "@@readme-output@@ "
KNOWN = {"sh", "python", "toml", ""}


@dataclass
class Block:
    lang: str
    code: str
    line: int  # the README line of the block's first line of code
    section: str
    skip: str | None  # why it is not run, when it is not


def readme_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks, section, i = [], "", 0
    while i < len(lines):
        if lines[i].startswith("## "):
            section = lines[i][3:].strip()
        elif lines[i].startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            skip = SKIP.fullmatch(lines[i - 1].strip()) if i else None
            blocks.append(Block(lines[i][3:].strip(), "\n".join(lines[i + 1:end]) + "\n", i + 2, section,
                                skip.group(1) if skip else None))
            i = end
        i += 1
    return blocks


def split_comment(line: str) -> tuple[str, str]:
    """(command, comment) of a line of code: the comment starts at the first '#' after a space."""
    m = re.search(r"(^|\s)#\s?(.*)$", line)
    return (line[:m.start()].rstrip(), m.group(2)) if m else (line.rstrip(), "")


def placeholders(line: str) -> list[str]:
    """Tokens that `# TOKEN: what to put there` declares on this line (TOKEN appears in the command)."""
    command, comment = split_comment(line)
    m = re.match(r"(\S+): ", comment)
    return [m.group(1)] if m and m.group(1) in command else []


def _a_cell_id(site: Path) -> str:
    import zarr

    plane = zarr.open_array(str(site / "demo-data" / "demo" / "cells" / "0"), mode="r")[64]
    return str(int(np.unique(plane[plane > 0])[0]))


def _edited_planes(site: Path) -> None:
    import tifffile
    import zarr

    em = zarr.open_array(str(site / "demo-data" / "demo" / "em" / "0"), mode="r")
    (site / "edited").mkdir(exist_ok=True)
    for z in (3, 4):
        tifffile.imwrite(site / "edited" / f"{z}.tif", 255 - em[z])


# placeholder -> what fills it in: a function of the site giving the text to put there (or None: keep the
# text, the function made what it names)
FILL = {"ID": _a_cell_id, "edited/": _edited_planes}


def check_output(line: int, expected: str, printed: str) -> None:
    want, got = " ".join(expected.split()), " ".join(printed.split())
    ok = got.startswith(want[:-3].rstrip()) if want.endswith("...") else got == want
    assert ok, f"README line {line}: prints {got[:300]!r}, the README says {want!r}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Runner:
    """Runs README blocks in one folder, keeping what they leave: files, the mount, servers."""

    def __init__(self, site: Path):
        self.site = site
        self.env = {k: v for k, v in os.environ.items() if k != "NDFS_CONFIG"}  # ./ndfs.toml, as in the README
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.servers: list[tuple[subprocess.Popen, Path, str]] = []
        self.section = None
        self.ports: dict[str, str] = {}
        self.fill: dict[str, str] = {}

    def sh(self, command: str, line: int, timeout: float = 900) -> str:
        done = subprocess.run(["bash", "-c", command], cwd=self.site, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"README line {line}: `{command}` failed ({done.returncode}): {done.stderr}"
        assert "Traceback" not in done.stderr, f"README line {line}: `{command}`: {done.stderr}"
        return done.stdout

    # ---- what a section needs ---------------------------------------------
    def enter(self, block: Block, section_blocks: list[Block]) -> None:
        if block.section != self.section:
            self.stop_servers()
            self.section = block.section
            self.ports = {}
            for b in section_blocks:
                for port in re.findall(r"^ndfs serve .*--port (\d+)", b.code, flags=re.M):
                    self.ports[port] = str(_free_port())
        if "mnt/" in block.code and not is_mounted(self.site / "mnt"):
            self.sh("mkdir -p mnt && ndfs mount mnt", block.line, timeout=120)  # as scripts/demo.sh does

    def prepare(self, block: Block) -> str:
        code = block.code
        for port, free in self.ports.items():
            code = code.replace(f"--port {port}", f"--port {free}").replace(f"127.0.0.1:{port}", f"127.0.0.1:{free}")
        for k, line in enumerate(code.splitlines()):
            for token in placeholders(line):
                assert token in FILL, f"README line {block.line + k}: placeholder {token!r} is not in FILL"
                if token not in self.fill:
                    self.fill[token] = FILL[token](self.site)
                if self.fill[token] is not None:
                    command, comment = split_comment(line)
                    code = code.replace(line, re.sub(rf"(?<![\w/]){re.escape(token)}(?!\w)", self.fill[token],
                                                     command) + f"  # {comment}")
        return code

    # ---- running -----------------------------------------------------------
    def run_sh(self, block: Block, code: str) -> None:
        for k, line in enumerate(code.splitlines()):
            command, comment = split_comment(line)
            if not command:
                continue
            if command.startswith("ndfs serve "):
                self.start_server(command, block.line + k)
                continue
            printed = self.sh(command, block.line + k)
            if comment.startswith("-> "):  # the comment of "# -> TEXT"
                check_output(block.line + k, comment[3:], printed)

    def run_python(self, block: Block, code: str) -> None:
        lines, expected = [], []
        for k, line in enumerate(code.splitlines()):
            if OUTPUT in line:
                assert line.startswith("print("), f"README line {block.line + k}: '# ->' follows a top-level print"
                expected.append((block.line + k, line.split(OUTPUT, 1)[1]))
                line += f"\nprint({MARK!r} + {str(len(expected) - 1)!r})"
            lines.append(line)
        python = sys.executable
        if re.search(r"^(from|import) ndio\b", code, flags=re.M):
            from test_neurodata import _ndio_venv  # ndio needs an old numpy: its own virtualenv

            python = _ndio_venv("1.1.5")
        done = subprocess.run([python, "-c", "\n".join(lines)], cwd=self.site, env=self.env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, f"the Python block at README line {block.line} failed: {done.stderr}"
        seen, printed = [], {}
        for out in done.stdout.splitlines():
            if out.startswith(MARK):
                printed[int(out[len(MARK):])] = seen[-1] if seen else ""
                seen = []
            else:
                seen.append(out)
        for i, (line, want) in enumerate(expected):
            check_output(line, want, printed[i])

    def start_server(self, command: str, line: int) -> None:
        log = self.site / f"serve-{len(self.servers)}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.site, env=self.env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.servers.append((proc, log, command))
        assert wait_until(lambda: "ndfs serve:" in log.read_text() or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, f"README line {line}: `{command}` did not start: {log.read_text()}"

    def stop_servers(self) -> None:
        servers, self.servers = self.servers, []
        for proc, log, command in servers:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            text = log.read_text()
            assert proc.returncode == 0 and "Traceback" not in text, f"`{command}` ended badly: {text[-2000:]}"

    def close(self) -> None:
        try:
            self.stop_servers()
        finally:
            if is_mounted(self.site / "mnt"):
                subprocess.run(["fusermount3", "-u", "-z", str(self.site / "mnt")], capture_output=True)


def test_the_readme_blocks_keep_its_conventions():
    blocks = readme_blocks(README.read_text())
    assert {b.lang for b in blocks} <= KNOWN, "a code block of a language this test does not know"
    runnable = [b for b in blocks if b.lang in ("sh", "python")]
    assert len([b for b in runnable if not b.skip]) >= 10
    for b in runnable:
        assert b.skip is None or len(b.skip.split()) >= 4, f"README line {b.line}: say why it is not run"
    markers = [n for n, line in enumerate(README.read_text().splitlines(), 1) if "not run by tests/" in line]
    assert len(markers) == len([b for b in blocks if b.skip]), "a 'not run' marker that is not before a block"
    declared = {t for b in runnable if not b.skip for line in b.code.splitlines() for t in placeholders(line)}
    assert declared == set(FILL)


@pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))
def test_every_readme_block_runs_as_written_in_order(tmp_path):
    shutil.copy(REPO / "ndfs.toml", tmp_path / "ndfs.toml")
    runner = Runner(tmp_path)
    blocks = [b for b in readme_blocks(README.read_text()) if b.lang in ("sh", "python") and not b.skip]
    try:
        runner.sh("ndfs demo --quiet", 0)  # as scripts/demo.sh does, into demo-data/ beside ndfs.toml
        for block in blocks:
            runner.enter(block, [b for b in blocks if b.section == block.section])
            code = runner.prepare(block)
            if block.lang == "sh":
                runner.run_sh(block, code)
            else:
                runner.run_python(block, code)
        runner.stop_servers()
    finally:
        runner.close()
