"""Starting a real ``gradeclip serve`` server for the tests: the shipped model, 127.0.0.1, a free port."""

import os
import socket

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from captum_gradeclip.app import ExplainService, ServeLimits, launch  # noqa: E402
from captum_gradeclip.cli import load_demo  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(limits: ServeLimits, workdir):
    """(app, service): the app served in a thread on 127.0.0.1 (the default host), on a free port."""
    service = ExplainService(load_demo("cpu"), limits, workdir=workdir)
    for attempt in range(3):  # another process may take the free port between the check and the bind
        try:
            return launch(service, port=free_port(), block=False, quiet=True), service
        except OSError:
            if attempt == 2:
                raise
