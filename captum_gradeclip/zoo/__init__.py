"""Model zoo: tiny CLIPs trained on the synthetic shapes world (shipped weights).

Examples:
    >>> from captum_gradeclip.zoo import load_shapes_clip
    >>> clip = load_shapes_clip("hf")
    >>> clip.kind, clip.image_size
    ('hf', 64)
"""

from .shapes_clip import (
    KINDS,
    MODELS,
    ShapesCLIP,
    build_model,
    load_shapes_clip,
    shapes_clip_from_files,
    weights_paths,
)
from .tokenizer import ShapesTokenizer

__all__ = [
    "KINDS",
    "MODELS",
    "ShapesCLIP",
    "ShapesTokenizer",
    "build_model",
    "load_shapes_clip",
    "shapes_clip_from_files",
    "weights_paths",
]
