"""The bounds a served app puts on every request, and the checks of the text a user typed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

from ..image_io import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS


class RequestError(ValueError):
    """A request the app refuses: the message says what was wrong and what is accepted."""


@dataclass(frozen=True)
class ServeLimits:
    """Bounds on what one request may ask of the server.

    Args:
        max_prompts: Most prompts in one request.
        max_prompt_chars: Most characters in one prompt.
        max_upload_bytes: Largest upload in bytes (refused by the web server before it is stored, and checked
            again by the image loader).
        max_image_pixels: Largest image in pixels (width x height), checked from the file's header before the
            image is decoded: a decompression bomb is refused, not decoded.
        max_aspect_ratio: Longest side over shortest side; in the ``native`` size mode the number of tokens
            grows with it.
        time_limit_s: Seconds one request may take, waiting for the model included; checked before each layer
            of the model runs and between the steps of Integrated Gradients.
        ig_max_steps: Most Integrated Gradients steps.
        queue_size: Most requests waiting in the queue; further ones are refused with a message.
        concurrency: Requests handled at once (the model itself runs one request at a time).

    Examples:
        >>> ServeLimits().max_prompts
        16
        >>> ServeLimits(max_prompts=2).check_prompts("a red circle\\n\\na blue square")
        ['a red circle', 'a blue square']
    """

    max_prompts: int = 16
    max_prompt_chars: int = 200
    max_upload_bytes: int = DEFAULT_MAX_BYTES
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect_ratio: float = 4.0
    time_limit_s: float = 60.0
    ig_max_steps: int = 128
    queue_size: int = 16
    concurrency: int = 2

    def __post_init__(self) -> None:
        for name in ("max_prompts", "max_prompt_chars", "max_upload_bytes", "max_image_pixels", "ig_max_steps",
                     "queue_size", "concurrency"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ServeLimits.{name} must be a positive integer, got {value!r}")
        for name in ("max_aspect_ratio", "time_limit_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"ServeLimits.{name} must be a positive number, got {value!r}")
        if self.max_aspect_ratio < 1:
            raise ValueError(f"ServeLimits.max_aspect_ratio must be at least 1, got {self.max_aspect_ratio}")

    def check_prompts(self, text: object) -> List[str]:
        """The prompts of ``text``, one per non-empty line, within the bounds.

        Args:
            text: What the user typed: prompts separated by newlines.

        Returns:
            The stripped, non-empty lines.

        Raises:
            RequestError: not a string, no prompt, too many prompts or a prompt too long.
        """
        if not isinstance(text, str):
            raise RequestError(f"prompts must be text (one prompt per line), got {type(text).__name__}")
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
        if not prompts:
            raise RequestError("no prompt: type at least one prompt, one per line (e.g. 'a red circle')")
        if len(prompts) > self.max_prompts:
            raise RequestError(f"{len(prompts)} prompts: at most {self.max_prompts} are accepted per request")
        for i, p in enumerate(prompts, 1):
            if len(p) > self.max_prompt_chars:
                raise RequestError(f"prompt {i} has {len(p)} characters: at most {self.max_prompt_chars} "
                                   "are accepted")
        return prompts

    def check_size(self, width: int, height: int) -> None:
        """Refuse images whose aspect ratio is beyond :attr:`max_aspect_ratio`.

        Raises:
            RequestError: the image is too elongated.
        """
        ratio = max(width, height) / max(1, min(width, height))
        if ratio > self.max_aspect_ratio:
            raise RequestError(f"the image is {width}x{height} pixels, an aspect ratio of {ratio:.1f}:1; at most "
                               f"{self.max_aspect_ratio:g}:1 is accepted (crop it first)")
