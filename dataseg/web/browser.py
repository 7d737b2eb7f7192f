"""Drives the demo page in a real headless Chromium (Playwright with the system's Chromium).

Used by the browser test and to make the screenshot in docs/INFERENCE.md:

    python -m dataseg.web.browser --url http://127.0.0.1:7860 --image IMG \
        --vocab "person; car; grass:stuff" --task panoptic --screenshot docs/web_demo.png

No browser is downloaded: Playwright is pointed at the Chromium that ``scripts/install.sh``
installs from the system's packages (Debian: ``apt-get install chromium``); ``DATASEG_CHROMIUM``
names another executable.
"""
import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Optional

from playwright.sync_api import sync_playwright

__all__ = ["find_chromium", "DemoPage", "segment_in_browser"]

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Records every text the status line shows (the "embedding…" step is brief).
_WATCH_STATUS = """() => {
  window.__statuses = [];
  const el = document.getElementById("status");
  new MutationObserver(() => window.__statuses.push(el.textContent))
    .observe(el, {childList: true, characterData: true, subtree: true});
}"""


def find_chromium() -> str:
    """The Chromium executable: ``$DATASEG_CHROMIUM``, else the first of CANDIDATES on PATH."""
    env = os.environ.get("DATASEG_CHROMIUM")
    if env:
        if not Path(env).is_file():
            raise FileNotFoundError(f"DATASEG_CHROMIUM={env} does not exist")
        return env
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError("no Chromium executable found (looked for "
                            f"{', '.join(CANDIDATES)}): run 'bash scripts/install.sh', which "
                            "installs Debian's chromium package, or set DATASEG_CHROMIUM")


class DemoPage:
    """A headless Chromium on the demo page, reused for several runs::

        with DemoPage(url) as page:
            result = page.segment(image, vocab="cat; grass:stuff", task="panoptic")
    """

    def __init__(self, url: str, timeout_s: float = 120.0, viewport=(1280, 820)):
        self.url, self.timeout_ms, self.viewport = url, timeout_s * 1000, viewport

    def __enter__(self):
        self._pw = sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(
                executable_path=find_chromium(), headless=True,
                args=["--no-sandbox", "--disable-gpu"])
            self.page = self._browser.new_page(
                viewport={"width": self.viewport[0], "height": self.viewport[1]})
            self.page.set_default_timeout(self.timeout_ms)
        except BaseException:
            self._pw.stop()
            raise
        return self

    def __exit__(self, *exc):
        try:
            self._browser.close()
        finally:
            self._pw.stop()

    def segment(self, image: Optional[Path], vocab: str = "", dataset: str = "",
                task: str = "panoptic", screenshot: Optional[Path] = None,
                reload: bool = True) -> dict:
        """Loads the page afresh (unless ``reload`` is False: the page as the last run left
        it, with its result on show), uploads ``image``, types ``vocab`` (or picks ``dataset``),
        picks ``task``, clicks Segment and waits until the run ends (result or error).

        Returns ``{"legend": [{"label", "kind", "score", "area"}], "overlay_src": str,
        "statuses": [status texts shown], "error": str, "state": "done"|"error",
        "download": href}``.
        """
        page = self.page
        if reload:
            page.goto(self.url)
            page.wait_for_selector("#tasks input[name=task]", state="attached")
        page.evaluate("() => { document.body.dataset.state = ''; }")
        if image is not None:
            page.set_input_files("#image-file", str(image))
        if dataset:
            page.select_option("#dataset", dataset)
        else:
            page.fill("#vocab", vocab)
        page.check(f"#tasks input[value={task}]")
        page.evaluate(_WATCH_STATUS)
        page.click("#run")
        # the page sets data-state on <body> to "done" or "error" when a run ends
        page.wait_for_selector("body[data-state=done], body[data-state=error]",
                               state="attached")
        legend = page.eval_on_selector_all(
            "#legend tbody tr", "rows => rows.map(r => Array.from(r.cells, c => "
            "c.textContent.trim()))")
        result = {
            "legend": [{"label": r[0], "kind": r[1], "score": r[2], "area": int(r[3])}
                       for r in legend],
            "overlay_src": page.get_attribute("#overlay", "src") or "",
            "statuses": page.evaluate("() => window.__statuses"),
            "error": page.text_content("#error") or "",
            "state": page.get_attribute("body", "data-state"),
            "download": page.get_attribute("#download", "href") or "",
        }
        if screenshot is not None:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        return result


def segment_in_browser(url: str, image: Optional[Path], vocab: str = "", dataset: str = "",
                       task: str = "panoptic", screenshot: Optional[Path] = None,
                       timeout_s: float = 120.0) -> dict:
    """One ``DemoPage.segment`` run in a browser of its own."""
    with DemoPage(url, timeout_s) as page:
        return page.segment(image, vocab, dataset, task, screenshot)


def main(argv=None):
    p = argparse.ArgumentParser(description="Segment one image through the demo page in "
                                            "headless Chromium; print what the page shows.")
    p.add_argument("--url", default="http://127.0.0.1:7860")
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--vocab", default="")
    p.add_argument("--dataset", default="")
    p.add_argument("--task", default="panoptic", choices=("semantic", "panoptic", "instance"))
    p.add_argument("--screenshot", type=Path, default=None, help="PNG of the whole page")
    args = p.parse_args(argv)
    result = segment_in_browser(args.url, args.image, args.vocab, args.dataset, args.task,
                                args.screenshot)
    result["overlay_src"] = result["overlay_src"][:40] + "..."
    print(json.dumps(result, indent=1))
    return 1 if result["error"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
