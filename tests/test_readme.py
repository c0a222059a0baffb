"""The README's Python example runs as written (on a smaller demo dataset)."""

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    (tmp_path / "ndfs.toml").write_text('[remotes.local]\nkind = "local"\npath = "store"\n')
    env = {**os.environ, "NDFS_CONFIG": str(tmp_path / "ndfs.toml")}
    subprocess.run([sys.executable, "-m", "ndfs", "demo", "--shape", "24", "512", "512", "--quiet"],
                   cwd=tmp_path, env=env, check=True, capture_output=True)
    for code in blocks:
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "(24, 512, 512) uint8 (40.0, 4.0, 4.0)" in done.stdout
