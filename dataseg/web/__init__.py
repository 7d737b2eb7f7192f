"""The web demo: one page and a JSON API (``POST /segment``) over one loaded DaTaSeg model.

``dataseg.web.service`` does the work (limits, vocabularies, the one-at-a-time gate, results),
``dataseg.web.app`` is the Starlette application around it, ``demo/web.py`` the command line,
``dataseg.web.browser`` drives the page in headless Chromium (tests, the screenshot in
docs/INFERENCE.md).
"""
from .service import Limits, RequestError, SegmentationService

__all__ = ["Limits", "RequestError", "SegmentationService"]
