"""The ``gradeclip serve`` command's options and what it runs (``cli.py`` registers it)."""

from __future__ import annotations

import argparse
import ipaddress

from ..loading import LoadedModel
from .limits import ServeLimits

_DEFAULTS = ServeLimits()


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The address and the limits of ``gradeclip serve`` (the model options are the CLI's own)."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    parser.add_argument("--share", action="store_true", help="also create a public Gradio share link (off by default)")
    limits = parser.add_argument_group("limits per request")
    limits.add_argument("--max-prompts", type=int, default=_DEFAULTS.max_prompts,
                        help=f"most prompts per request (default: {_DEFAULTS.max_prompts})")
    limits.add_argument("--max-prompt-chars", type=int, default=_DEFAULTS.max_prompt_chars,
                        help=f"most characters per prompt (default: {_DEFAULTS.max_prompt_chars})")
    limits.add_argument("--max-upload-mb", type=float, default=_DEFAULTS.max_upload_bytes / 2 ** 20,
                        help=f"largest upload in MiB (default: {_DEFAULTS.max_upload_bytes / 2 ** 20:g})")
    limits.add_argument("--max-megapixels", type=float, default=_DEFAULTS.max_image_pixels / 1e6,
                        help="largest image in megapixels, checked before decoding "
                             f"(default: {_DEFAULTS.max_image_pixels / 1e6:g})")
    limits.add_argument("--max-aspect-ratio", type=float, default=_DEFAULTS.max_aspect_ratio,
                        help=f"longest over shortest side (default: {_DEFAULTS.max_aspect_ratio:g})")
    limits.add_argument("--time-limit", type=float, default=_DEFAULTS.time_limit_s,
                        help=f"seconds per request, waiting included (default: {_DEFAULTS.time_limit_s:g})")
    limits.add_argument("--ig-max-steps", type=int, default=_DEFAULTS.ig_max_steps,
                        help=f"most Integrated Gradients steps (default: {_DEFAULTS.ig_max_steps})")
    limits.add_argument("--queue-size", type=int, default=_DEFAULTS.queue_size,
                        help=f"most requests waiting; more are refused (default: {_DEFAULTS.queue_size})")
    limits.add_argument("--concurrency", type=int, default=_DEFAULTS.concurrency,
                        help=f"requests handled at once; the model runs one at a time (default: "
                             f"{_DEFAULTS.concurrency})")


def limits_from_args(args: argparse.Namespace) -> ServeLimits:
    """The :class:`ServeLimits` the options ask for.

    Raises:
        ValueError: a limit that is not positive (one line, naming the limit).
    """
    try:
        return ServeLimits(max_prompts=args.max_prompts, max_prompt_chars=args.max_prompt_chars,
                           max_upload_bytes=max(1, int(args.max_upload_mb * 2 ** 20)),
                           max_image_pixels=max(1, int(args.max_megapixels * 1e6)),
                           max_aspect_ratio=args.max_aspect_ratio, time_limit_s=args.time_limit,
                           ig_max_steps=args.ig_max_steps, queue_size=args.queue_size,
                           concurrency=args.concurrency)
    except ValueError as err:
        raise ValueError(f"{str(err).replace('ServeLimits.', 'limit ')} (see gradeclip serve --help)") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(lm: LoadedModel, limits: ServeLimits, args: argparse.Namespace) -> int:
    """Serve the app for ``lm`` until interrupted.

    Raises:
        ImportError: Gradio is not installed (the message says how to install it).
    """
    from .ui import launch
    from .service import ExplainService
    if not _is_loopback(args.host):
        print(f"gradeclip serve: binding to {args.host}: anyone who can reach this machine can use the app")
    if args.share:
        print("gradeclip serve: --share: Gradio creates a public link to this app")
    service = ExplainService(lm, limits, device=args.device)
    try:
        launch(service, host=args.host, port=args.port, share=args.share)
    finally:
        service.close()
    return 0
