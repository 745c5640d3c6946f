"""The Gradio page of ``gradeclip serve`` around an :class:`~captum_gradeclip.app.ExplainService`.

Uploads arrive as file paths (``gr.File``), so the guarded image loader sees the raw bytes before anything decodes
them. Every refusal becomes a :class:`gradio.Error`: a message in the page (or in ``gradio_client``'s exception),
never a stack trace, and the server keeps serving.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, List, Optional, Tuple, TypeVar

import numpy as np

from .limits import RequestError
from .service import LAYER_RULE_CHOICES, SIZE_MODES, ExplainService

try:
    import gradio as gr
except ImportError as _err:  # pragma: no cover - depends on the install
    raise ImportError("the served app needs Gradio: pip install 'captum-gradeclip[demo]'") from _err

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_PROMPTS = "a red circle\na blue square\na green triangle"
PREVIEW_SIDE = 512  # the preview of an upload is a PNG thumbnail of what the guarded loader decoded


def _guarded(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one request; turn every failure into a message for the page."""
    try:
        return call(*args, **kwargs)
    except RequestError as err:
        raise gr.Error(str(err), title="Request refused", print_exception=False) from None
    except (ValueError, TypeError) as err:  # the library's own input checks: clear messages already
        raise gr.Error(f"the request was refused: {err}", title="Request refused", print_exception=False) from None
    except Exception as err:
        log.exception("gradeclip serve: request failed")
        raise gr.Error(f"the explanation failed ({type(err).__name__}); the details are in the server's log",
                       title="Error", print_exception=False) from None


def build_app(service: ExplainService, *, title: str = "Grad-ECLIP explanations") -> "gr.Blocks":
    """The Gradio page: upload or draw an image, type prompts, get heat maps, shaded words and the raw maps.

    Events that use the model share one concurrency group (``model``); queue limits are set by :func:`launch`
    (or by the caller's ``app.queue(...)``). The named endpoint ``/explain`` takes ``(image, prompts)`` (the other
    inputs have defaults) and returns the overlays first, then the words' HTML, the .npz file and a status line.

    Args:
        service: The request handler (model, limits, files).
        title: The page title.

    Returns:
        A :class:`gradio.Blocks`, not launched.

    Examples:
        >>> from captum_gradeclip.loading import load_demo
        >>> from captum_gradeclip.app import ExplainService, ServeLimits, build_app
        >>> app = build_app(ExplainService(load_demo("cpu"), ServeLimits()))  # doctest: +SKIP
        >>> app.queue(max_size=16).launch(server_name="127.0.0.1")             # doctest: +SKIP
    """
    limits = service.limits

    def show(image: Optional[str]) -> Optional[str]:
        if image is None:
            return None
        return str(_guarded(service.save_png, _guarded(service.load_image, image), "preview", max_side=PREVIEW_SIDE,
                            min_side=PREVIEW_SIDE // 2))

    def draw() -> Tuple[str, str]:
        path = str(service.draw_scene())
        return path, show(path)

    def explain(image: Optional[str], prompts: str, layers: float = 0, single_head: bool = False,
                size: str = "native", layer_rule: str = "default") -> Tuple[List[Tuple[str, str]], str, str, str]:
        result = _guarded(service.explain, image, prompts, layers=layers, single_head=single_head, size=size,
                          layer_rule=layer_rule)
        exp = result.explanation
        best = int(np.argmax(exp.similarity))
        status = (f"Explained {len(exp.prompts)} prompt(s) in {result.seconds:.2f} s with {service.lm.name}. "
                  f"Best match: **{exp.prompts[best]}** (cosine {exp.similarity[best]:.3f}).")
        overlays = [(str(service.save_png(o, f"overlay_{i}")), c)
                    for i, (o, c) in enumerate(zip(result.overlays, result.captions), 1)]
        return overlays, result.words_html, str(_guarded(service.save_maps, result)), status

    def compare(image: Optional[str], prompt: str, steps: float, layers: float, single_head: bool, size: str,
                layer_rule: str = "default", progress: gr.Progress = gr.Progress()) -> List[Tuple[str, str]]:
        def report(fraction: float, desc: str) -> None:
            progress(fraction, desc=desc)
        pairs = _guarded(service.compare_with_ig, image, prompt, steps=steps, layers=layers,
                         single_head=single_head, size=size, layer_rule=layer_rule, progress=report)
        return [(str(service.save_png(o, f"compare_{i}")), c) for i, (o, c) in enumerate(pairs, 1)]

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(900, 3600)) as app:
        gr.Markdown(f"# {title}\nModel: **{service.lm.name}**. Upload an image (or draw a shapes scene), type "
                    "prompts one per line and press **Explain**: one heat map per prompt, each prompt's words "
                    f"shaded by importance, and the raw maps. Limits: {limits.max_prompts} prompts of at most "
                    f"{limits.max_prompt_chars} characters, images up to {limits.max_upload_bytes / 2 ** 20:.0f} MiB "
                    f"and {limits.max_image_pixels / 1e6:.0f} megapixels, {limits.time_limit_s:g} s per request.")
        with gr.Row():
            with gr.Column():
                image = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="image")
                preview = gr.Image(label="Preview", type="filepath", interactive=False, height=240, elem_id="preview")
                draw_button = gr.Button("Draw a new shapes scene", elem_id="draw")
                prompts = gr.Textbox(label="Prompts (one per line)", value=DEFAULT_PROMPTS, lines=4,
                                     elem_id="prompts")
                with gr.Accordion("Options", open=False):
                    layers = gr.Slider(0, service.max_layers, value=0, step=1, elem_id="layers",
                                       label="Layers: last blocks explained (0: 1 for the image, 8 for the text)")
                    single_head = gr.Checkbox(False, label="single_head (the authors' released code)",
                                              elem_id="single_head")
                    size = gr.Radio(list(SIZE_MODES), value="native", elem_id="size",
                                    label="Image size: native keeps the aspect ratio, model crops to a square")
                    layer_rule = gr.Radio(list(LAYER_RULE_CHOICES), value="default", elem_id="layer_rule",
                                          label="Layer rule for several layers (default: the paper's, "
                                                "relu_then_sum for the image, sum_then_relu for the words)")
                run = gr.Button("Explain", variant="primary", elem_id="run")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                overlays = gr.Gallery(label="Heat maps, one per prompt (cosine similarity)", format="png",
                                      columns=3, elem_id="overlays")
                words = gr.HTML(label="Words shaded by importance", elem_id="words")
                maps_file = gr.File(label="Raw maps (.npz)", interactive=False, elem_id="maps")
        with gr.Accordion("Compare with Integrated Gradients (one prompt; slower)", open=False):
            with gr.Row():
                ig_prompt = gr.Textbox(label="Prompt", value="a red circle", elem_id="ig_prompt")
                ig_steps = gr.Slider(2, limits.ig_max_steps, value=min(32, limits.ig_max_steps), step=1,
                                     label="Integrated Gradients steps", elem_id="ig_steps")
            ig_run = gr.Button("Compare", elem_id="ig_run")
            ig_gallery = gr.Gallery(label="Grad-ECLIP | Integrated Gradients", format="png", columns=2,
                                    elem_id="ig_overlays")

        image.upload(show, inputs=image, outputs=preview, api_visibility="private")
        draw_button.click(draw, outputs=[image, preview], api_visibility="private")
        run.click(explain, inputs=[image, prompts, layers, single_head, size, layer_rule],
                  outputs=[overlays, words, maps_file, status], api_name="explain", concurrency_id="model")
        ig_run.click(compare, inputs=[image, ig_prompt, ig_steps, layers, single_head, size, layer_rule],
                     outputs=ig_gallery, api_name="compare_with_ig", concurrency_id="model")
    return app


def launch(service: ExplainService, *, host: str = "127.0.0.1", port: Optional[int] = None, share: bool = False,
           block: bool = True, quiet: bool = False) -> "gr.Blocks":
    """Serve :func:`build_app` with the service's queue and upload limits.

    Args:
        service: The request handler.
        host: Address to bind; ``127.0.0.1`` (this machine only) by default. ``0.0.0.0`` serves the network.
        port: Port (``None``: Gradio's default, 7860, or the next free one).
        share: Create a public Gradio share link (never by default).
        block: Serve until interrupted (``False``: return at once, the server runs in a thread; call
            ``app.close()`` to stop it).
        quiet: Do not print the address.

    Returns:
        The launched :class:`gradio.Blocks` (its ``local_url`` is the address).
    """
    limits = service.limits
    app = build_app(service)
    app.queue(max_size=limits.queue_size, default_concurrency_limit=limits.concurrency)
    app.launch(server_name=host, server_port=port, share=share, max_file_size=limits.max_upload_bytes,
               prevent_thread_lock=not block, quiet=quiet, ssr_mode=False, mcp_server=False,
               footer_links=["api"])
    return app
