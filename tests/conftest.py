"""The pytest fixtures shared by the test modules, built from tests/fixtures.py (tiny, seeded CLIP models built
from configs, no downloads), and the session's settings (offline, headless, one intra-op thread)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from fixtures import make_hf_clip, make_open_clip, make_tokens, write_hf_clip  # noqa: E402

torch.set_num_threads(1)  # tiny models: threads cost more than they give, and keep the suite steady under load

@pytest.fixture(scope="module")
def one_intra_op_thread():
    """Tiny models: one intra-op thread is several times faster on a shared, loaded CPU; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def oc_model():
    return make_open_clip()


@pytest.fixture(scope="session")
def hf_model():
    return make_hf_clip()


@pytest.fixture(scope="session")
def tokens():
    return make_tokens()


@pytest.fixture(scope="session")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def hf_model_dir(tmp_path_factory):
    """A tiny HuggingFace CLIP with its processor saved in a folder (:func:`fixtures.write_hf_clip`)."""
    pytest.importorskip("transformers")
    return write_hf_clip(tmp_path_factory.mktemp("hf_clip"))
