"""What the served app does with one request, without any web framework: load the upload through the guarded
image loader, check the prompts, explain them on the shared model, and render overlays, shaded words and raw maps.

One model serves every user. The explainers (scorers, :class:`~captum_gradeclip.GradECLIP`, Integrated Gradients)
are built afresh for each request, and a request holds the model's lock (:func:`captum_gradeclip.hooking.model_lock`,
the lock the library's explainers take for each call) for its whole model part: the Grad-ECLIP maps of both sides,
or Grad-ECLIP and every step of Integrated Gradients, run as one unit with the request's time-limit hooks, and a
request waiting for the model gives up when its time is over. Everything else (decoding the upload, preparing the
image, drawing overlays, writing files) runs outside the lock.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch

from .. import viz
from ..explanations import Explanation, explain_image, save_maps
from ..loading import LoadedModel, normalize_pixels, prepare_image
from ..grad_eclip import LAYER_RULES
from ..hooking import calling_thread_only, model_lock
from ..image_io import ImageLoadError, load_image
from .limits import RequestError, ServeLimits

SIZE_MODES = ("native", "model")
#: The layer rules offered: ``default`` is the paper's rule for each side (GradECLIP's ``layer_rule=None``).
LAYER_RULE_CHOICES = ("default",) + LAYER_RULES
#: How a user of the page selects the other text rule, for the note shown when no word scores positive.
_SWITCH = 'the layer rule "relu_then_sum" (Options)'


class RequestTimeout(RequestError):
    """A request ran past the per-request time limit (or waited too long for the model)."""


class Deadline:
    """The time a request must be done by.

    Args:
        seconds: Seconds from now.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.end = time.monotonic() + self.seconds

    def remaining(self) -> float:
        """Seconds left (negative once past)."""
        return self.end - time.monotonic()

    def check(self, doing: str) -> None:
        """Raise :class:`RequestTimeout` if the deadline has passed.

        Args:
            doing: What was running, for the message.
        """
        if time.monotonic() > self.end:
            raise RequestTimeout(f"the request ran past the time limit of {self.seconds:g} s while {doing}; "
                                 "try fewer prompts, fewer layers, fewer steps or a smaller image")


@dataclass
class ExplainResult:
    """One request's answer.

    Attributes:
        explanation: The maps, similarities and words (:class:`captum_gradeclip.explanations.Explanation`).
        overlays: One ``(H, W, 3)`` ``uint8`` heat-map overlay per prompt.
        captions: One caption per overlay: the prompt and its cosine similarity.
        words_html: Each prompt's words shaded by importance (HTML).
        seconds: Wall time of the explanation (waiting for the model included).
    """

    explanation: Explanation
    overlays: List[np.ndarray]
    captions: List[str]
    words_html: str
    seconds: float


class ExplainService:
    """Explains uploaded images against typed prompts on one loaded model, safely for concurrent callers.

    Args:
        lm: The loaded model (:func:`captum_gradeclip.loading.load_demo`, ``load_open_clip`` or ``load_hf``).
        limits: The bounds on each request.
        device: Where the model lives (``"cpu"`` or ``"cuda"``).
        workdir: Folder for the files handed to users (.npz downloads, drawn scenes); a new temporary folder by
            default, removed by :meth:`close`. Files older than an hour are removed as new ones are written.

    Examples:
        >>> from captum_gradeclip.loading import load_demo
        >>> service = ExplainService(load_demo("cpu"), ServeLimits())
        >>> result = service.explain(service.draw_scene(seed=0), "a red circle\\na blue square")
        >>> len(result.overlays), result.captions[0].startswith("a red circle")
        (2, True)
        >>> service.close()
    """

    FILE_TTL_S = 3600.0

    def __init__(self, lm: LoadedModel, limits: ServeLimits, device: str = "cpu",
                 workdir: Optional[Path] = None) -> None:
        from ..adapters import image_tower, text_tower
        self.lm = lm
        self.limits = limits
        self.device = device
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="gradeclip-serve-")) if workdir is None else Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._lock = model_lock(lm.model)
        tower = image_tower(lm.model)
        self.patch: Optional[int] = getattr(tower, "patch", (None,))[0]
        self.max_layers = max(len(tower.blocks()), len(text_tower(lm.model).blocks()))

    # ------------------------------------------------------------------------------------------ checks
    def check_options(self, layers: Any, size: Any, layer_rule: Any = None) -> Tuple[Optional[int], str, Optional[str]]:
        """``layers`` (0 or ``None``: the default), the image size mode and the layer rule (``None`` or
        ``"default"``: the paper's rule for each side), checked.

        Raises:
            RequestError: ``layers`` is not a whole number in ``[0, max_layers]``, an unknown size mode or rule.
        """
        if size not in SIZE_MODES:
            raise RequestError(f"image size mode must be one of {SIZE_MODES}, got {size!r}")
        if layer_rule is not None and layer_rule not in LAYER_RULE_CHOICES:
            raise RequestError(f"layer rule must be one of {LAYER_RULE_CHOICES}, got {layer_rule!r}")
        rule = None if layer_rule in (None, "default") else layer_rule
        if layers is None:
            return None, size, rule
        try:
            n = float(layers)
        except (TypeError, ValueError):
            raise RequestError(f"layers must be a whole number, got {layers!r}") from None
        if not n.is_integer() or not 0 <= n <= self.max_layers:
            raise RequestError(f"layers must be a whole number from 0 (the default) to {self.max_layers}, "
                               f"got {layers!r}")
        return (int(n) or None), size, rule

    def load_image(self, source: Any) -> Any:
        """The upload as a PIL RGB image, through the guarded loader (bytes and pixels bounded before decoding).

        Args:
            source: A file path (what the web app passes), bytes, a file object or a PIL image.

        Raises:
            RequestError: no image, an unreadable, truncated, too large or too elongated image.
        """
        if source is None or (isinstance(source, str) and not source.strip()):
            raise RequestError("no image: upload an image (PNG, JPEG, ...) or draw a shapes scene")
        try:
            named = isinstance(source, (str, Path))  # name the upload, not the server's folder, in messages
            image = load_image(source, max_pixels=self.limits.max_image_pixels,
                               max_bytes=self.limits.max_upload_bytes, name=Path(source).name if named else None)
        except ImageLoadError as err:
            raise RequestError(f"the image was refused: {err}") from None
        self.limits.check_size(*image.size)
        return image

    def _tokenize_check(self, prompts: List[str]) -> None:
        try:
            self.lm.tokenize(prompts)
        except (ValueError, TypeError) as err:  # e.g. a word the shipped model does not know
            raise RequestError(f"the prompts cannot be read by {self.lm.name}: {err}") from None

    @contextlib.contextmanager
    def _model_in_use(self, deadline: Deadline) -> Iterator[None]:
        """Hold the model for one request; every module checks the deadline before it runs (in this thread)."""
        if not self._lock.acquire(timeout=max(0.0, deadline.remaining())):
            raise RequestTimeout(f"the server was busy with other requests for the whole time limit of "
                                 f"{deadline.seconds:g} s; try again later")
        @calling_thread_only
        def check(module: torch.nn.Module, args: Any) -> None:
            deadline.check(f"running {type(module).__name__}")
        handles = []
        try:
            for module in self.lm.model.modules():
                handles.append(module.register_forward_pre_hook(check))
            yield
        finally:
            for h in handles:
                h.remove()
            self._lock.release()

    # ------------------------------------------------------------------------------------------ requests
    def explain(self, image: Any, prompts: Any, *, layers: Any = None, single_head: bool = False,
                size: str = "native", layer_rule: Optional[str] = None) -> ExplainResult:
        """Grad-ECLIP maps of one image for every prompt (image side) and of every prompt's words (text side).

        Args:
            image: The upload (see :meth:`load_image`).
            prompts: Prompts separated by newlines.
            layers: Number of last blocks explained; 0 or ``None``: 1 for the image, 8 for the text.
            single_head: Reproduce the authors' released code.
            size: ``"native"`` (keep the aspect ratio) or ``"model"`` (centre crop to the model's size).
            layer_rule: How several layers are combined (``GradECLIP``'s ``layer_rule``); ``None`` or
                ``"default"``: the paper's rule for each side.

        Returns:
            An :class:`ExplainResult`.

        Raises:
            RequestError: bad input (the message says what and what is accepted) or the time limit.
        """
        deadline = Deadline(self.limits.time_limit_s)
        start = time.perf_counter()
        texts = self.limits.check_prompts(prompts)
        n_layers, size, rule = self.check_options(layers, size, layer_rule)
        pil = self.load_image(image)
        self._tokenize_check(texts)
        img01 = prepare_image(pil, self.lm.image_size, self.patch, size)
        with self._model_in_use(deadline):
            exp = explain_image(self.lm, img01, texts, explain="both", layers=n_layers,
                                single_head=bool(single_head), device=self.device, layer_rule=rule)
        overlays = [viz.overlay(exp.image01, m) for m in exp.image_maps]
        captions = [f"{p} (cosine {s:.3f})" for p, s in zip(texts, exp.similarity.tolist())]
        empty = viz.empty_words_message(exp.text_layer_rule, _SWITCH)
        words_html = "\n".join(viz.token_html(w, np.asarray(sc, dtype=np.float32), title=c, empty_message=empty)
                               for c, w, sc in zip(captions, exp.words, exp.word_scores))
        return ExplainResult(explanation=exp, overlays=overlays, captions=captions, words_html=words_html,
                             seconds=time.perf_counter() - start)

    def compare_with_ig(self, image: Any, prompt: str, *, steps: int = 32, layers: Any = None,
                        single_head: bool = False, size: str = "native", layer_rule: Optional[str] = None,
                        progress: Optional[Callable[[float, str], None]] = None
                        ) -> List[Tuple[np.ndarray, str]]:
        """Grad-ECLIP next to Integrated Gradients for one prompt, on the same scorer.

        Args:
            image: The upload (see :meth:`load_image`).
            prompt: One prompt.
            steps: Integrated Gradients steps (at most ``limits.ig_max_steps``).
            layers, single_head, size, layer_rule: As in :meth:`explain`.
            progress: Called with (fraction done, what is running) as Integrated Gradients advances.

        Returns:
            Two ``(overlay, caption)`` pairs: Grad-ECLIP, then Integrated Gradients (per-pixel magnitude).

        Raises:
            RequestError: bad input or the time limit.
        """
        from captum.attr import IntegratedGradients

        from ..grad_eclip import GradECLIP
        from ..scorers import ImageTextSimilarity
        deadline = Deadline(self.limits.time_limit_s)
        texts = self.limits.check_prompts(prompt)
        if len(texts) != 1:
            raise RequestError(f"the comparison takes one prompt, got {len(texts)}")
        try:
            n_steps = int(steps)
        except (TypeError, ValueError):
            raise RequestError(f"steps must be a whole number, got {steps!r}") from None
        if not 2 <= n_steps <= self.limits.ig_max_steps:
            raise RequestError(f"steps must be from 2 to {self.limits.ig_max_steps}, got {steps!r}")
        n_layers, size, rule = self.check_options(layers, size, layer_rule)
        pil = self.load_image(image)
        self._tokenize_check(texts)
        img01 = prepare_image(pil, self.lm.image_size, self.patch, size)
        batch = min(n_steps, 8)
        total = math.ceil(n_steps / batch)
        report = progress or (lambda fraction, desc: None)
        with self._model_in_use(deadline):
            pixels = normalize_pixels(img01[None].to(self.device), self.lm)
            scorer = ImageTextSimilarity(self.lm.model, self.lm.tokenize(texts))
            blocks = scorer.tower.blocks()[-n_layers:] if n_layers else None
            t0 = time.perf_counter()
            ge_map = GradECLIP(scorer, blocks, single_head=bool(single_head), layer_rule=rule).attribute(pixels,
                                                                                                     target=0)
            t1 = time.perf_counter()
            done = [0]

            def forward(x: torch.Tensor) -> torch.Tensor:
                deadline.check("computing Integrated Gradients")
                report(min(1.0, done[0] / total), f"Integrated Gradients: {done[0] * batch}/{n_steps} steps")
                done[0] += 1
                return scorer(x)

            ig = IntegratedGradients(forward).attribute(pixels, target=0, n_steps=n_steps, internal_batch_size=batch)
            t2 = time.perf_counter()
        report(1.0, "done")
        ig_map = ig.detach().abs().sum(dim=1)[0].cpu()  # (H, W) per-pixel magnitude
        return [(viz.overlay(img01, ge_map[0, 0].detach().cpu()), f"Grad-ECLIP ({t1 - t0:.2f} s)"),
                (viz.overlay(img01, ig_map), f"Integrated Gradients, {n_steps} steps ({t2 - t1:.2f} s)")]

    # ------------------------------------------------------------------------------------------ files
    def draw_scene(self, seed: Optional[int] = None) -> Path:
        """A new shapes scene (``captum_gradeclip.data.shapes``) written as a PNG; its path.

        Args:
            seed: Scene seed; a random one by default.
        """
        from PIL import Image

        from ..data.shapes import generate_scenes
        seed = random.randrange(1 << 30) if seed is None else int(seed)
        scene = generate_scenes(1, image_size=max(64, self.lm.image_size), num_objects=(2, 3), seed=seed)
        arr = (scene.images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        path = self._new_file(f"scene_{seed}", ".png")
        Image.fromarray(arr).save(path)
        return path

    def save_png(self, image: Any, stem: str, max_side: Optional[int] = None, min_side: Optional[int] = None) -> Path:
        """An ``(H, W, 3)`` ``uint8`` array or a PIL image as a new PNG file, shrunk to fit ``max_side`` or enlarged
        by a whole factor (pixels repeated) to reach ``min_side`` if given.

        The web app hands files, not arrays, to Gradio: Gradio stores a returned file under a name derived from
        its content and publishes it atomically, so concurrent users who get identical pictures never download a
        half-written one.
        """
        from PIL import Image
        pil = Image.fromarray(image) if isinstance(image, np.ndarray) else image.copy()
        if max_side is not None:
            pil.thumbnail((max_side, max_side))
        if min_side is not None and max(pil.size) < min_side:
            factor = -(-min_side // max(pil.size))
            pil = pil.resize((pil.width * factor, pil.height * factor), Image.NEAREST)
        path = self._new_file(stem, ".png")
        pil.save(path)
        return path

    def save_maps(self, result: ExplainResult) -> Path:
        """The raw maps of a result as a new .npz file (see :func:`captum_gradeclip.explanations.save_maps`); its
        path."""
        return save_maps(result.explanation, self._new_file("gradeclip_maps", ".npz"))

    def _new_file(self, stem: str, suffix: str) -> Path:
        self._prune()
        folder = self.workdir / uuid.uuid4().hex  # one folder per file: the user sees a clean file name
        folder.mkdir()
        return folder / f"{stem}{suffix}"

    def _prune(self) -> None:
        cutoff = time.time() - self.FILE_TTL_S
        for folder in self.workdir.iterdir():
            with contextlib.suppress(OSError):
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder)

    def close(self) -> None:
        """Remove the files handed out (when the working folder is the service's own)."""
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
