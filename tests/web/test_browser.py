"""The demo page in a real headless Chromium (Playwright with the system's Chromium), served by
``demo/web.py`` itself (the command line the README gives) on a free local port."""
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from dataseg.web.browser import DemoPage, find_chromium

# starting demo/web.py (imports, model) takes 10-30 s on 2 busy cores; the browser runs take seconds
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cli_server(tiny_demo):
    """``python demo/web.py --port 0 ...``: its printed URL, once it answers."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "demo" / "web.py"), "--config-file",
         str(REPO / "configs" / "quickstart.yaml"), "--port", "0", "--opts"] + tiny_demo.opts,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(tiny_demo.tmp))
    try:
        lines, started = [], threading.Event()

        def read_output():  # keeps the pipe drained for as long as the server logs
            for line in proc.stdout:
                lines.append(line)
                if "DaTaSeg demo: open" in line:
                    started.set()
            started.set()

        threading.Thread(target=read_output, daemon=True).start()
        started.wait(180)
        found = [re.search(r"open (http://\S+)", line) for line in lines]
        urls = [m.group(1) for m in found if m]
        assert urls, "demo/web.py did not start:\n" + "".join(lines)
        url = urls[0]
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=5).read()
                break
            except OSError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser_page(cli_server):
    """One headless Chromium for the module (a launch costs seconds)."""
    with DemoPage(cli_server) as page:
        yield page


def test_listens_on_localhost_by_default(cli_server):
    assert cli_server.startswith("http://127.0.0.1:")


def test_chromium_is_installed():
    """scripts/install.sh installs the system's Chromium; the browser test needs it."""
    assert Path(find_chromium()).is_file()


def test_page_segments_an_uploaded_image(browser_page, tiny_demo, tmp_path):
    # seen by no other test of the session: the page must embed it first
    vocab = "person; automobile|car; kite; sheep; sky:stuff; lawn:stuff; sea:stuff"
    shot = tmp_path / "page.png"
    result = browser_page.segment(tiny_demo.images[0], vocab=vocab, task="semantic",
                                  screenshot=shot)
    assert result["state"] == "done" and result["error"] == "", result
    assert result["overlay_src"].startswith("data:image/png;base64,")
    assert result["legend"], "no legend rows"
    names = {n.split("|")[0].split(":")[0].strip() for n in vocab.split(";")}
    for row in result["legend"]:
        assert row["label"] in names and row["area"] > 0
        assert row["kind"] == ("stuff" if row["label"] in ("sky", "lawn", "sea") else "thing")
    # a first-seen vocabulary: the page said it was embedding it, then segmented
    assert any(s.startswith("embedding") for s in result["statuses"]), result["statuses"]
    assert result["download"].startswith("/results/")
    assert shot.stat().st_size > 10_000


def test_page_shows_errors_and_keeps_working(browser_page, tiny_demo):
    empty = browser_page.segment(tiny_demo.images[1], vocab=" , ", task="semantic")
    assert "empty" in empty["error"] and not empty["legend"]
    not_image = Path(__file__)  # a Python file is no image
    bad = browser_page.segment(not_image, vocab="person", task="semantic")
    assert "not an image" in bad["error"]
    assert bad["state"] == "error" and empty["state"] == "error"
    ok = browser_page.segment(tiny_demo.images[1], dataset="synth_pan_val", task="semantic")
    assert ok["state"] == "done" and ok["error"] == "" and ok["legend"]


def test_a_refused_upload_clears_the_previous_result(browser_page, tiny_demo):
    """Issue 25: after a result, an upload the server refuses leaves no overlay, legend or
    download link of the previous image on the page (nor a broken image)."""
    ok = browser_page.segment(tiny_demo.images[0], dataset="synth_pan_val", task="semantic")
    assert ok["state"] == "done" and ok["legend"] and ok["overlay_src"] and ok["download"]
    bad = browser_page.segment(Path(__file__), vocab="person", task="semantic", reload=False)
    assert bad["state"] == "error" and "not an image" in bad["error"], bad
    assert bad["legend"] == [] and bad["overlay_src"] == "" and bad["download"] == "", bad
    assert browser_page.page.get_attribute("#input-view", "hidden") is not None
