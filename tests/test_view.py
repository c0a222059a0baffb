"""``ndfs view``: neuroglancer's bundled client and the chosen channels on 127.0.0.1, drawn by a real headless
Chromium (Debian's, software WebGL): the image, the segmentation and the meshes, which the server saw asked for."""

import io
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
import requests

from ndfs.testing.browser import chromium_unavailable, headless_chromium
from ndfs.tools.demo import make_demo

pytest.importorskip("neuroglancer")
pytest.importorskip("zmesh")
pytest.importorskip("compressed_segmentation")
Image = pytest.importorskip("PIL.Image")

SIZE = (1000, 700)
FRAGMENT = re.compile(r"/demo/cells/mesh/(\d+):0:\d+$")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("view")
    backend = make_demo(str(root / "store"), shape=(48, 320, 320), progress=False, chunk_shape=(16, 128, 128))
    backend.create_volume(("demo", "other"), (8, 64, 64), "uint8")  # another frame: not shown with em
    (root / "ndfs.toml").write_text('[remotes.local]\nkind = "local"\npath = "store"\n')
    yield root, backend
    backend.close()


def test_ndfs_view_serves_the_client_and_only_the_chosen_channels(site):
    root = site[0]
    proc = subprocess.Popen([sys.executable, "-m", "ndfs", "--config", str(root / "ndfs.toml"), "view", "local/demo/em"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"at (http://127\.0\.0\.1:\d+/v/\w+/) \(data at (http://127\.0\.0\.1:\d+)/", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        assert "demo/em, demo/cells" in line
        page = requests.get(m.group(1))
        assert page.status_code == 200 and "<title>neuroglancer</title>" in page.text
        data = m.group(2)
        assert requests.get(f"{data}/demo/em/info").json()["type"] == "image"
        assert requests.get(f"{data}/demo/cells/info").json()["type"] == "segmentation"
        assert requests.get(f"{data}/demo/other/info").status_code == 404  # served: only what is shown
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        proc.stdout.close()
        proc.stderr.close()


def saturated(pixels: np.ndarray) -> np.ndarray:
    rgb = pixels[..., :3].astype(np.int16)
    return (rgb.max(axis=-1) - rgb.min(axis=-1)) > 40


@pytest.mark.skipif(chromium_unavailable() is not None, reason=str(chromium_unavailable()))
def test_headless_chromium_draws_the_image_the_segmentation_and_the_meshes(site, tmp_path):
    from ndfs.serve.view import ViewSession

    backend = site[1]
    with ViewSession(backend, [("demo", "em")]) as session:
        segments = session.segments[("demo", "cells")]
        assert len(segments) >= 3
        shot: dict = {}
        with headless_chromium(session.url, SIZE, log_path=tmp_path / "chromium.log") as browser:
            worker = threading.Thread(target=lambda: shot.setdefault("png", session.screenshot(SIZE)), daemon=True)
            worker.start()
            worker.join(300)  # a guard against a browser that never connects, not a measure
            assert "png" in shot, f"no screenshot (chromium exit {browser.poll()}): " + \
                (tmp_path / "chromium.log").read_text(errors="replace")[-2000:]
        (tmp_path / "view.png").write_bytes(shot["png"])
        pixels = np.asarray(Image.open(io.BytesIO(shot["png"])).convert("RGB"))
        log = [path for _, path, status in session.server.counter._log if status == 200]
    assert pixels.shape[:2] == (SIZE[1], SIZE[0])
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000  # not blank
    slice_view, three_d = pixels[:, : SIZE[0] // 2], pixels[:, SIZE[0] // 2:]
    grey = slice_view[~saturated(slice_view)]
    assert grey[..., 0].std() > 10  # the EM texture is drawn
    assert saturated(slice_view).mean() > 0.05  # the selected cells are coloured over it
    assert saturated(three_d).mean() > 0.05  # their meshes in the 3D view
    meshed = {int(m.group(1)) for m in map(FRAGMENT.search, log) if m}
    assert meshed == set(segments)
    assert any("/demo/em/" in p and re.search(r"/\d+/\d+-\d+_", p) for p in log)
    assert any("/demo/cells/" in p and re.search(r"/\d+/\d+-\d+_", p) for p in log)
