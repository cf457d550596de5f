"""A local web page (Gradio): drop a dermoscopy image, see the class probabilities and a Grad-CAM overlay.

    caco-jax serve --workdir runs/caco            # http://127.0.0.1:7860

Needs the ``app`` extra (``pip install -e '.[app]'``). Uploads are checked before the
model sees them: size, pixel count and decodability, each failure answered with a
message on the page (and in the API's result), never an exception. Images go through the
one decoding path (``caco_jax.data.images``): shown and analysed upright (EXIF
orientation), 16-bit and palette images converted. The answer comes from the chosen
decision rule (argmax or the run's fitted balanced rule), named on the page. Uploads and
the images sent back live in the page's own folder, swept by a thread of its own (never on a
request's path): nothing older than ``Limits.keep_seconds`` and never more than
``Limits.cache_bytes``, except what is younger than ``UploadCache.grace_seconds`` (which a
request may still be using) and folders Gradio may still write into.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Any

import numpy as np
from PIL import Image

from caco_jax.data import fov
from caco_jax.data.images import UnreadableImage, open_image
from caco_jax.evaluation.saliency import overlay
from caco_jax.serving.predictor import RULE_TEXT, Predictor
from caco_jax.serving.uploads import UploadCache

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
# What a client reads: the element ids a browser (and tools/screenshot_app.py) finds, and the words that
# start the answer in the message; the HTTP-API tests and the real-browser check read the same.
UPLOAD_ID, MESSAGE_ID, GRADCAM_ID = "upload", "message", "gradcam"
ANSWER = "Answer:"


class UploadError(ValueError):
    """An upload the page refuses, with a message for the user."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the page accepts (file size in bytes, image size in pixels) and keeps (uploads and the
    images sent back: for at most ``keep_seconds``, at most ``cache_bytes`` in all)."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    keep_seconds: int = 600
    cache_bytes: int = 256 * 1024 * 1024


def kept(limits: Limits) -> str:
    """How long the page keeps an upload, in words: at most ``keep_seconds``, less once its
    ``cache_bytes`` fill up (the sweeper then removes the oldest files first)."""
    seconds = float(limits.keep_seconds)
    span = f"{seconds / 60:g} minutes" if seconds >= 120 else f"{seconds:g} seconds"
    return (
        f"uploads are kept at most {span}, and less when the page's {limits.cache_bytes / 2**20:g} MB "
        "of upload space fills up"
    )


def read_upload(path: str | os.PathLike | None, limits: Limits) -> tuple[bytes, np.ndarray]:
    """(the file's bytes, its image as uint8 RGB [H, W, 3], upright), or ``UploadError`` saying what is
    wrong with it."""
    if not path:
        raise UploadError("Drop a dermoscopy image (JPEG or PNG) on the upload box first.")
    path = pathlib.Path(path)
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise UploadError(
                f"{path.name} is {size / 2**20:.1f} MB; the limit is {limits.max_bytes / 2**20:.0f} MB. "
                "Please upload a smaller image."
            )
        data = path.read_bytes()
    except OSError:
        raise UploadError(f"{path.name} is no longer on the server ({kept(limits)}); please upload it again.") from None
    if not data:
        raise UploadError(f"{path.name} is empty (0 bytes).")
    try:
        image = open_image(data, max_pixels=limits.max_pixels)
    except UnreadableImage as err:
        raise UploadError(
            f"{path.name}: {_sentence(str(err))} Upload a JPEG, PNG, BMP, TIFF or WebP photograph of the lesion."
        ) from None
    except MemoryError:
        raise UploadError(
            f"{path.name} is too large to decode on this server. Please upload a smaller image."
        ) from None
    return data, np.asarray(image, np.uint8)


def _sentence(reason: str) -> str:
    """A decoder's reason as a sentence: 'not an image ...' -> 'Not an image ....'"""
    reason = reason[:1].upper() + reason[1:]
    return reason if reason.endswith(".") else reason + "."


def _display(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    scale = DISPLAY_SIDE / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


UNLIKE = "A dermoscopy image whose acquisition differs from the training images."
NOT_DERMOSCOPY = "This does not look like a dermoscopy image."


class Analyser:
    """The page's one action: validate, decide (optionally test-time augmented) with a rule, explain."""

    def __init__(self, predictor: Predictor, limits: Limits = Limits(), cache: UploadCache | None = None):
        self.predictor = predictor
        self.limits = limits
        self.cache = cache

    def warm_up(self) -> None:
        """Compiles the steps every request runs (probabilities and Grad-CAM) before the first visitor."""
        s = self.predictor.image_size
        blank = np.zeros((1, s, s, 3), np.uint8)
        self.predictor.decide(blank)
        self.predictor.explain(blank)
        self.predictor.screen(blank)

    def __call__(
        self, path: str | None, explain: str = PREDICTED, tta: bool = False, rule: str | None = None
    ) -> tuple[dict[str, float] | None, np.ndarray | None, np.ndarray | None, str]:
        """(probabilities by class, the image, its Grad-CAM overlay, a markdown message)."""
        try:
            return self._analyse(path, explain, tta, rule or self.predictor.decision)
        except UploadError as err:
            return None, None, None, f"**Cannot analyse this file.** {err}\n\n{REMINDER}"
        except Exception as err:  # the page must answer, whatever happened; the log keeps the traceback
            log.exception("analysing %s failed", path)
            return None, None, None, f"**Analysis failed** ({type(err).__name__}: {err}).\n\n{REMINDER}"

    def _analyse(
        self, path: str | None, explain: str, tta: bool, rule: str
    ) -> tuple[dict[str, float], np.ndarray, np.ndarray, str]:
        data, original = read_upload(path, self.limits)
        if self.predictor.fov_crop:  # show what the model sees, so that the heat map lies on it
            original = fov.crop(original)
        names = self.predictor.class_names
        if explain not in (PREDICTED, *names):
            raise UploadError(f"Unknown class {explain!r}; choose one of: {', '.join(names)}.")
        if rule not in self.predictor.rules:
            raise UploadError(
                f"The {rule!r} decision rule is not available for this model; choose one of: "
                f"{', '.join(self.predictor.rules)}."
            )
        square = self.predictor.prepare(data, max_pixels=self.limits.max_pixels)  # what evaluation feeds the model
        screen = self.predictor.screen(square[None])
        if screen is not None and bool(screen.not_dermoscopy[0]):
            message = (
                f"**{NOT_DERMOSCOPY}** It is far from every dermoscopy image the guard knows, including copies made "
                "to look like other cameras and fields of view (a photograph, a document, another kind of "
                "medical image, a flat colour or noise). **No answer is given**: the model only knows skin "
                f"lesions under a dermatoscope.\n\n{REMINDER}"
            )
            return None, _display(original), None, message  # type: ignore[return-value]
        answer = self.predictor.decide(square[None], tta=tta, rule=rule)
        answered = int(answer.classes[0])
        _, classes, cams = self.predictor.explain(
            square[None], answered if explain == PREDICTED else names.index(explain)
        )
        probs = answer.probabilities[0]
        shown = _display(original)
        t = self.predictor.temperature
        warnings = self._warnings(screen, float(answer.model_probabilities[0, answered]), tta)
        marked = " *(another acquisition: see the warning)*" if warnings and warnings[0].startswith("**") else ""
        lines = [
            *warnings,
            f"- {ANSWER} **{names[answered]}** ({probs[answered]:.1%}){marked}.",
            f"- Decision rule: {RULE_TEXT[rule]}.",
            (
                f"- Heat map: where the image supports **{names[int(classes[0])]}** (red: most, relative to the rest "
                "of the image)."
            ),
            ("- Probabilities: averaged over 8 flips and 90-degree rotations; " if tta else "- Probabilities: ")
            + (
                f"temperature-scaled (T = {t:.2f}, fitted on the validation split)." if t else "no temperature scaling."
            ),
            "",
            REMINDER,
        ]
        return (
            {n: float(p) for n, p in zip(names, probs, strict=True)},
            shown,
            overlay(shown, cams[0]),
            "\n".join(lines),
        )

    def _warnings(self, screen: Any, confidence: float, tta: bool) -> list[str]:
        """What to say above the answer: the guard's verdict for a dermoscopy image unlike the training images
        and, for an image the guard passes, whether the answer's confidence is below the level this run
        measured as unreliable."""
        if screen is not None and bool(screen.unlike_training[0]):
            return [
                f"**{UNLIKE}** (another camera, light or field of view: its out-of-distribution score, "
                f"{screen.scores[0]:.4g}, is above what 95 % of the validation images reach). The answer is "
                f"given, but expect it to be wrong more often than on the training clinics' images "
                "(docs/results_sources_cpu.md). A clinic can adapt the model to its own images with "
                "`caco-jax adapt`.",
                "",
            ]
        threshold = self.predictor.confidence_threshold(tta)
        if threshold is not None and confidence < threshold:
            return [
                f"- **Low confidence**: {confidence:.1%}, below {threshold:.1%}, the confidence above which this "
                "run's answers on validation images were 90 % accurate. Treat this answer as unreliable.",
            ]
        return []


def describe(workdir: str | os.PathLike, predictor: Predictor) -> str:
    """One line on the model behind the page: architecture, data, classes."""
    from caco_jax.data import registry
    from caco_jax.runs.workspace import load_config

    config = load_config(workdir)
    dataset = registry.known(config.data.name)
    if config.data.synthetic_images > 0:
        data = "**synthetic** HAM10000-like images (a demo: it knows nothing about real lesions)"
    elif dataset is not None and dataset.images:
        data = dataset.images_of(config)
    else:
        data = f"the {config.data.name!r} images"
    return (
        f"Model: MobileNetV3-{config.model.attention} ({config.model.arch}, {predictor.image_size} px input) "
        f"trained on {data}; classes: {', '.join(predictor.class_names)}."
    )


def build(
    analyser: Analyser, *, title: str = "caco-jax: skin-lesion classifier (research tool)", description: str = ""
) -> Any:
    """The Gradio Blocks page around ``analyser`` (its uploads go to ``analyser.cache``'s folder)."""
    import gradio as gr

    if analyser.cache is not None:  # Gradio reads it when the page and its server are made
        os.environ["GRADIO_TEMP_DIR"] = str(analyser.cache.directory)
    names = analyser.predictor.class_names
    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(f"# {title}\n\n{NOTICE}", elem_id="notice")
        if description:
            gr.Markdown(description)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Dermoscopy image (JPEG, PNG, ...)", type="filepath", elem_id=UPLOAD_ID)
                explain = gr.Dropdown([PREDICTED, *names], value=PREDICTED, label="Heat map for")
                tta = gr.Checkbox(False, label="Test-time augmentation (average over 8 flips / rotations)")
                rule = gr.Radio(
                    list(analyser.predictor.rules),
                    value=analyser.predictor.decision,
                    label="Decision rule",
                    elem_id="decision",
                    info="argmax: the most probable class; balanced: equal recall across classes "
                    "(fitted on the validation split)",
                )
                button = gr.Button("Analyse", variant="primary", elem_id="analyse")
            with gr.Column(scale=2):
                message = gr.Markdown("Drop an image to start.", elem_id=MESSAGE_ID)
                probabilities = gr.Label(
                    num_top_classes=len(names), label="Class probabilities", elem_id="probabilities"
                )
        with gr.Row():
            image = gr.Image(label="Your image", type="numpy", interactive=False, format="png")
            heat = gr.Image(label="Grad-CAM overlay", type="numpy", interactive=False, format="png", elem_id=GRADCAM_ID)
        outputs = [probabilities, image, heat, message]
        button.click(analyser, [upload, explain, tta, rule], outputs, api_name="analyse")
        upload.upload(analyser, [upload, explain, tta, rule], outputs, api_visibility="private")
    page.queue(default_concurrency_limit=1)
    return page


def launch(
    page: Any, *, host: str = "127.0.0.1", port: int = 7860, limits: Limits = Limits(), block: bool = True
) -> Any:
    """Serves the page on host:port (localhost by default; never a public share link). System fonts
    only, so the page loads nothing from outside."""
    import gradio as gr

    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    return page.launch(
        server_name=host,
        server_port=port,
        share=False,
        max_file_size=limits.max_bytes,
        show_error=True,
        prevent_thread_lock=not block,
        quiet=not block,
        theme=theme,
        inbrowser=False,
        ssr_mode=False,
        mcp_server=False,
        enable_monitoring=False,
        app_kwargs={"exception_handlers": _refusals()},
    )


def _refusals() -> dict[Any, Any]:
    """The API's answer to a file path the page did not receive as an upload (Gradio refuses it before the
    analyser runs): a message with HTTP 403, not a 500 and a server traceback."""
    from fastapi.responses import JSONResponse
    from gradio.exceptions import InvalidPathError

    def refuse(_request: Any, error: Exception) -> Any:
        return JSONResponse(
            {"error": f"refused: {error}. Send the image itself (upload it first, then pass what the upload returns)."},
            status_code=403,
        )

    return {InvalidPathError: refuse}
