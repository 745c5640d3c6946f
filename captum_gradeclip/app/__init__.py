"""The served app (``gradeclip serve``): Grad-ECLIP in the browser, with bounded, guarded requests.

:class:`ExplainService` does the work of one request without any web framework (and is what the tests and
scripts call); :func:`build_app` wraps it in a Gradio page with a named API endpoint ``/explain``;
:func:`launch` serves it. Gradio is an extra: ``pip install "captum-gradeclip[demo]"``.
"""

from .limits import RequestError, ServeLimits
from .service import ExplainResult, ExplainService, RequestTimeout

__all__ = ["ExplainResult", "ExplainService", "RequestError", "RequestTimeout", "ServeLimits", "build_app", "launch"]


def __getattr__(name: str):  # the Gradio part is imported on first use: the service works without Gradio
    if name in ("build_app", "launch"):
        from . import ui
        return getattr(ui, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
