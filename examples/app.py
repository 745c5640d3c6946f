"""A ready ``app.py`` for a hosted Gradio Space or your own server: ``gradeclip serve`` as a file.

Copy it next to a ``requirements.txt`` that names ``captum-gradeclip[demo]`` (and ``transformers`` for a
HuggingFace model). The model and the limits come from environment variables, never from the page:

    GRADECLIP_MODEL=demo                       the shipped shapes model (default; offline)
    GRADECLIP_MODEL=open_clip:ViT-B-16:openai  an open_clip model and its pretrained tag (downloaded once)
    GRADECLIP_MODEL=hf:openai/clip-vit-base-patch16   a HuggingFace model id or a saved folder
    GRADECLIP_DEVICE=cuda                      where the model runs (default: cpu)
    GRADECLIP_MAX_PROMPTS=8, GRADECLIP_TIME_LIMIT=30, ...   any ServeLimits field, upper-cased

Run locally with ``python app.py`` (127.0.0.1:7860). A hosted Space sets ``GRADIO_SERVER_NAME=0.0.0.0`` itself, and
the app binds to that; on your own server, put a reverse proxy (TLS, authentication) in front and set it there.
"""

import dataclasses
import os

from captum_gradeclip.app import ExplainService, ServeLimits, launch
from captum_gradeclip.loading import LoadedModel, load_demo, load_hf, load_open_clip


def load_model(spec: str, device: str) -> LoadedModel:
    """``demo``, ``open_clip:NAME:TAG`` or ``hf:ID``."""
    kind, _, rest = spec.partition(":")
    if kind == "demo":
        return load_demo(device)
    if kind == "open_clip":
        name, _, tag = rest.partition(":")
        return load_open_clip(name, tag or None, device)
    if kind == "hf":
        return load_hf(rest, device)
    raise SystemExit(f"GRADECLIP_MODEL={spec!r}: expected demo, open_clip:NAME:TAG or hf:ID")


def limits_from_env() -> ServeLimits:
    """:class:`ServeLimits` with any field overridden by ``GRADECLIP_<FIELD>``."""
    values = {}
    for field in dataclasses.fields(ServeLimits):
        raw = os.environ.get(f"GRADECLIP_{field.name.upper()}")
        if raw is not None:
            values[field.name] = float(raw) if field.type == "float" else int(raw)
    return ServeLimits(**values)


def make_service() -> ExplainService:
    device = os.environ.get("GRADECLIP_DEVICE", "cpu")
    return ExplainService(load_model(os.environ.get("GRADECLIP_MODEL", "demo"), device), limits_from_env(),
                          device=device)


if __name__ == "__main__":
    launch(make_service(), host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
           port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
