"""One-off check of the web page in a real headless browser: drop an image, wait for the result, screenshot.

    apt-get install chromium            # Debian's Chromium
    pip install -e '.[app]' playwright  # the Python driver only; the browser is Debian's
    python tools/screenshot_app.py --workdir runs/caco --image lesion.jpg --out docs/app_screenshot.png

Serves the page on 127.0.0.1, opens it in Chromium (headless, no background
networking, a throwaway profile), uploads the image through the page's own file input,
waits for the probabilities and the Grad-CAM overlay, and saves a full-page
screenshot. Every request the page makes to anything but this machine is blocked and
listed, and makes the check fail. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import pathlib
import socket
import sys
import tempfile
import time
from urllib.parse import urlparse

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=pathlib.Path, required=True)
    p.add_argument("--image", type=pathlib.Path, required=True, help="the image to drop on the page")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/app_screenshot.png"))
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--explain", default="", help="class for the heat map (default: the predicted one)")
    p.add_argument("--tta", action="store_true", help="tick test-time augmentation before analysing")
    p.add_argument("--timeout_s", type=float, default=300)
    args = p.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from caco_jax.serving import app
    from caco_jax.serving.predictor import Predictor
    from caco_jax.training import compile_cache

    compile_cache.enable(None)
    predictor = Predictor(args.workdir, batch_size=1)
    analyser = app.Analyser(predictor)
    analyser.warm_up()
    page_app = app.build(analyser, description=app.describe(args.workdir, predictor))
    _, url, _ = app.launch(page_app, port=_free_port(), block=False)
    blocked: list[str] = []
    try:
        with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=args.chromium,
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

            context.route("**/*", guard)
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(args.timeout_s * 1000)
            page.goto(url)
            page.wait_for_selector("#upload input[type=file]", state="attached")
            if args.explain:
                page.get_by_label("Heat map for").click()
                page.get_by_role("option", name=args.explain, exact=True).click()
            if args.tta:
                page.get_by_label("Test-time augmentation", exact=False).check()
            start = time.perf_counter()
            page.set_input_files("#upload input[type=file]", str(args.image))
            page.wait_for_function(
                "() => document.querySelector('#message')?.innerText.includes('Highest probability')"
                " && document.querySelector('#gradcam img')"
            )
            page.wait_for_timeout(500)  # let the images finish painting
            elapsed = time.perf_counter() - start
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            message = page.inner_text("#message")
            context.close()
    finally:
        page_app.close()
    print(f"result after {elapsed:.1f} s; screenshot: {args.out}")
    print(message)
    if blocked:
        print("blocked requests to other hosts:", *blocked, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
