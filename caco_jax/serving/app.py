"""A local web page (Gradio): drop a dermoscopy image, see the class probabilities and a Grad-CAM overlay.

    python scripts/serve.py --workdir runs/caco            # http://127.0.0.1:7860

Needs the ``app`` extra (``pip install -e '.[app]'``). Uploads are checked before the
model sees them: size, pixel count and decodability, each failure answered with a
message on the page (and in the API's result), never an exception.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import pathlib
import warnings
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from caco_jax.serving.predictor import Predictor
from caco_jax.evaluation.saliency import overlay

log = logging.getLogger("caco_jax.serving.app")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no version check or usage report

NOTICE = (
    "**Research tool, not a diagnosis.** This page shows what a machine-learning model trained on "
    "dermoscopy images outputs for your image. It is not a medical device, it has not been "
    "clinically validated, and its output must not be used to diagnose, rule out or treat anything. "
    "See a dermatologist about any skin lesion that worries you."
)
REMINDER = "*A research model's output, not a diagnosis.*"
PREDICTED = "predicted class"
DISPLAY_SIDE = 768  # longest side of the images sent back to the page


class UploadError(ValueError):
    """An upload the page refuses, with a message for the user."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the page accepts: file size in bytes and image size in pixels."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000


def read_upload(path: str | os.PathLike | None, limits: Limits) -> tuple[bytes, np.ndarray]:
    """(the file's bytes, its image as uint8 RGB [H, W, 3]), or ``UploadError`` saying what is wrong with it."""
    if not path:
        raise UploadError("Drop a dermoscopy image (JPEG or PNG) on the upload box first.")
    path = pathlib.Path(path)
    size = path.stat().st_size
    if size == 0:
        raise UploadError(f"{path.name} is empty (0 bytes).")
    if size > limits.max_bytes:
        raise UploadError(f"{path.name} is {size / 2**20:.1f} MB; the limit is {limits.max_bytes / 2**20:.0f} MB. "
                          "Please upload a smaller image.")
    data = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))  # reads the header only
        except UnidentifiedImageError:
            raise UploadError(f"{path.name} is not an image this page can read. Upload a JPEG, PNG, BMP, TIFF or "
                              "WebP photograph of the lesion.") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise UploadError(f"{path.name} could not be decoded: the file looks damaged or incomplete "
                              f"({err}).") from None
        width, height = image.size
        if width * height > limits.max_pixels:
            raise UploadError(f"{path.name} is {width} x {height} pixels; the limit is "
                              f"{limits.max_pixels / 1e6:.0f} megapixels. Please upload a smaller image.")
        try:
            image.load()
            rgb = np.asarray(image.convert("RGB"), np.uint8)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise UploadError(f"{path.name} could not be decoded: the file looks damaged or incomplete "
                              f"({err}).") from None
    return data, rgb


def _display(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    scale = DISPLAY_SIDE / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


class Analyser:
    """The page's one action: validate, classify (optionally test-time augmented), explain."""

    def __init__(self, predictor: Predictor, limits: Limits = Limits()):
        self.predictor = predictor
        self.limits = limits

    def warm_up(self) -> None:
        """Compiles the Grad-CAM step (what every request runs) before the first visitor."""
        s = self.predictor.image_size
        self.predictor.explain(np.zeros((1, s, s, 3), np.uint8))

    def __call__(self, path: str | None, explain: str = PREDICTED, tta: bool = False
                 ) -> tuple[dict[str, float] | None, np.ndarray | None, np.ndarray | None, str]:
        """(probabilities by class, the image, its Grad-CAM overlay, a markdown message)."""
        try:
            data, original = read_upload(path, self.limits)
            names = self.predictor.class_names
            if explain not in (PREDICTED, *names):
                raise UploadError(f"Unknown class {explain!r}; choose one of: {', '.join(names)}.")
            target = None if explain == PREDICTED else names.index(explain)
            try:
                square = self.predictor.prepare(data)  # exactly what evaluation and predict.py feed the model
            except (OSError, ValueError) as err:
                raise UploadError(f"{pathlib.Path(path).name} could not be decoded ({err}).") from None
            plain, classes, cams = self.predictor.explain(square[None], target)
            probs = self.predictor.probabilities(square[None], tta=True)[0] if tta else plain[0]
        except UploadError as err:
            return None, None, None, f"**Cannot analyse this file.** {err}\n\n{REMINDER}"
        except Exception as err:  # the page must answer, whatever happened; the log keeps the traceback
            log.exception("analysing %s failed", path)
            return None, None, None, f"**Analysis failed** ({type(err).__name__}: {err}).\n\n{REMINDER}"
        shown = _display(original)
        top = int(np.argmax(probs))
        explained = names[int(classes[0])]
        t = self.predictor.temperature
        lines = [
            f"- Highest probability: **{names[top]}** ({probs[top]:.1%}).",
            f"- Heat map: where the image supports **{explained}** (red: most, relative to the rest of the image).",
            ("- Probabilities: averaged over 8 flips and 90-degree rotations; " if tta else "- Probabilities: ")
            + (f"temperature-scaled (T = {t:.2f}, fitted on the validation split)." if t else "no temperature scaling."),
            "", REMINDER,
        ]
        return ({n: float(p) for n, p in zip(names, probs)}, shown, overlay(shown, cams[0]), "\n".join(lines))


def describe(workdir: str | os.PathLike, predictor: Predictor) -> str:
    """One line on the model behind the page: architecture, data, classes."""
    from caco_jax.runs.workspace import load_config

    config = load_config(workdir)
    if config.data.synthetic_images > 0:
        data = "**synthetic** HAM10000-like images (a demo: it knows nothing about real lesions)"
    elif config.data.name == "ham10000":
        data = "HAM10000 dermoscopy images"
    else:
        data = f"the image folders of {config.data.manual_dir}"
    return (f"Model: MobileNetV3-{config.model.attention} ({config.model.arch}, {predictor.image_size} px input) "
            f"trained on {data}; classes: {', '.join(predictor.class_names)}.")


def build(analyser: Analyser, *, title: str = "caco-jax: skin-lesion classifier (research tool)",
          description: str = "") -> Any:
    """The Gradio Blocks page around ``analyser``."""
    import gradio as gr

    names = analyser.predictor.class_names
    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(f"# {title}\n\n{NOTICE}", elem_id="notice")
        if description:
            gr.Markdown(description)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Dermoscopy image (JPEG, PNG, ...)", type="filepath", elem_id="upload")
                explain = gr.Dropdown([PREDICTED, *names], value=PREDICTED, label="Heat map for")
                tta = gr.Checkbox(False, label="Test-time augmentation (average over 8 flips / rotations)")
                button = gr.Button("Analyse", variant="primary", elem_id="analyse")
            with gr.Column(scale=2):
                message = gr.Markdown("Drop an image to start.", elem_id="message")
                probabilities = gr.Label(num_top_classes=len(names), label="Class probabilities", elem_id="probabilities")
        with gr.Row():
            image = gr.Image(label="Your image", type="numpy", interactive=False, format="png")
            heat = gr.Image(label="Grad-CAM overlay", type="numpy", interactive=False, format="png", elem_id="gradcam")
        outputs = [probabilities, image, heat, message]
        button.click(analyser, [upload, explain, tta], outputs, api_name="analyse")
        upload.upload(analyser, [upload, explain, tta], outputs, api_visibility="private")
    page.queue(default_concurrency_limit=1)
    return page


def launch(page: Any, *, host: str = "127.0.0.1", port: int = 7860, limits: Limits = Limits(),
           block: bool = True) -> Any:
    """Serves the page on host:port (localhost by default; never a public share link). System fonts
    only, so the page loads nothing from outside."""
    import gradio as gr

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    return page.launch(server_name=host, server_port=port, share=False, max_file_size=limits.max_bytes,
                       show_error=True, prevent_thread_lock=not block, quiet=not block, theme=theme,
                       inbrowser=False, ssr_mode=False, mcp_server=False, enable_monitoring=False)
