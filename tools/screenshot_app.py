"""The web page in a real headless browser: drop an image, wait for the answer, screenshot.

    apt-get install chromium            # Debian's Chromium (or chromium-headless-shell)
    pip install -e '.[app]' playwright  # the Python driver only; the browser is Debian's
    python tools/screenshot_app.py --workdir runs/caco --image lesion.jpg --out docs/app_screenshot.png

Serves the page on 127.0.0.1, opens it in Chromium (headless, no background networking, a
throwaway profile), uploads the image through the page's own file input, waits for the answer
and the Grad-CAM overlay, and saves a full-page screenshot. Every request the page makes to
anything but this machine is blocked and listed, and makes the check fail.

:func:`check_page` is also the test suite's real-browser check
(``tests/test_app.py::test_the_page_answers_in_a_real_browser``, skipped where there is no
Chromium or playwright): it finds the page's parts by the element ids and the answer's words that
``caco_jax.serving.app`` defines and its HTTP-API tests read, so it cannot drift from the page.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shutil
import socket
import sys
import tempfile
import time
from urllib.parse import urlparse

from caco_jax.serving import app

CHROMIUM_ENV = "CACO_JAX_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclasses.dataclass
class Shown:
    """What the browser showed: the message's text, seconds from the drop to the answer, blocked requests."""

    message: str
    seconds: float
    blocked: list[str]


def find_chromium() -> str | None:
    """``$CACO_JAX_CHROMIUM``, else the first Chromium on the PATH, else None."""
    return os.environ.get(CHROMIUM_ENV) or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


def check_page(
    url: str,
    image: pathlib.Path,
    *,
    chromium: str,
    explain: str = "",
    tta: bool = False,
    timeout_s: float = 120,
    screenshot: pathlib.Path | None = None,
) -> Shown:
    """Opens the page at ``url`` in headless Chromium, drops ``image`` on its upload box and waits until the
    message gives the answer and the Grad-CAM overlay is drawn (raises playwright's TimeoutError if not)."""
    from playwright.sync_api import sync_playwright

    blocked: list[str] = []
    upload = f"#{app.UPLOAD_ID} input[type=file]"
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
            device_scale_factor=1,
        )

        def guard(route):
            host = urlparse(route.request.url).hostname
            if route.request.url.startswith(("data:", "blob:")) or host in LOCAL_HOSTS:
                route.continue_()
            else:
                blocked.append(route.request.url)
                route.abort()

        try:
            context.route("**/*", guard)
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(timeout_s * 1000)
            page.goto(url)
            page.wait_for_selector(upload, state="attached")
            if explain:
                page.get_by_label("Heat map for").click()
                page.get_by_role("option", name=explain, exact=True).click()
            if tta:
                page.get_by_label("Test-time augmentation", exact=False).check()
            start = time.perf_counter()
            page.set_input_files(upload, str(image))
            page.wait_for_function(
                "([message, answer, gradcam]) => document.querySelector(message)?.innerText.includes(answer)"
                " && document.querySelector(gradcam + ' img')",
                arg=[f"#{app.MESSAGE_ID}", app.ANSWER, f"#{app.GRADCAM_ID}"],
            )
            seconds = time.perf_counter() - start
            page.wait_for_timeout(500)  # let the images finish painting
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
            message = page.inner_text(f"#{app.MESSAGE_ID}")
        finally:
            context.close()
    return Shown(message, seconds, blocked)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=pathlib.Path, required=True)
    p.add_argument("--image", type=pathlib.Path, required=True, help="the image to drop on the page")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/app_screenshot.png"))
    p.add_argument("--chromium", default=find_chromium(), help=f"the browser (default: ${CHROMIUM_ENV} or PATH)")
    p.add_argument("--explain", default="", help="class for the heat map (default: the predicted one)")
    p.add_argument("--tta", action="store_true", help="tick test-time augmentation before analysing")
    p.add_argument("--timeout_s", type=float, default=300)
    args = p.parse_args(argv)
    if not args.chromium:
        p.error(f"no Chromium found: apt-get install chromium, or give --chromium PATH (or ${CHROMIUM_ENV})")

    from caco_jax.serving.predictor import Predictor
    from caco_jax.training import compile_cache

    compile_cache.enable(None)
    predictor = Predictor(args.workdir, batch_size=1)
    analyser = app.Analyser(predictor)
    analyser.warm_up()
    page_app = app.build(analyser, description=app.describe(args.workdir, predictor))
    _, url, _ = app.launch(page_app, port=_free_port(), block=False)
    try:
        shown = check_page(
            url,
            args.image,
            chromium=args.chromium,
            explain=args.explain,
            tta=args.tta,
            timeout_s=args.timeout_s,
            screenshot=args.out,
        )
    finally:
        page_app.close()
    print(f"result after {shown.seconds:.1f} s; screenshot: {args.out}")
    print(shown.message)
    if shown.blocked:
        print("blocked requests to other hosts:", *shown.blocked, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
