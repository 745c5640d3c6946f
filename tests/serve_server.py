"""Starting a real ``gradeclip serve`` server for the tests: the shipped model, 127.0.0.1, a free port."""

import contextlib
import os
import socket
import threading

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from captum_gradeclip.app import ExplainService, ServeLimits, launch  # noqa: E402
from captum_gradeclip.loading import load_demo  # noqa: E402


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


@contextlib.contextmanager
def model_held(service, seconds=None):
    """Another request holds the model: a thread takes the model's lock until the block ends (or ``seconds``)."""
    taken, done = threading.Event(), threading.Event()

    def hold():
        with service._lock:
            taken.set()
            done.wait(seconds)
    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    taken.wait()
    try:
        yield
    finally:
        done.set()
        holder.join()


def model_free(service) -> bool:
    """Whether another thread could take the model's lock at once."""
    result = []

    def probe():
        got = service._lock.acquire(blocking=False)
        result.append(got)
        if got:
            service._lock.release()
    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return result[0]
