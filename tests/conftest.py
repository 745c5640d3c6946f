"""Shared fixtures: tiny, seeded CLIP models built from configs (no downloads)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tiny models: threads cost more than they give, and keep the suite steady under load

CONTEXT = 12
EOT = 99  # the largest id: open_clip pools at argmax


def make_open_clip(heads: int = 2, text_heads: int = 3, layers: int = 2, text_layers: int = 3, seed: int = 0,
                   image_size: int = 32):
    import open_clip
    torch.manual_seed(seed)
    cfg = dict(embed_dim=32,
               vision_cfg=dict(image_size=image_size, patch_size=8, width=48, layers=layers, head_width=48 // heads),
               text_cfg=dict(context_length=CONTEXT, vocab_size=100, width=48, heads=text_heads, layers=text_layers))
    return open_clip.CLIP(**cfg).eval()


def make_hf_clip(seed: int = 0, attn_implementation: str = "eager"):
    from transformers import CLIPConfig, CLIPModel
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=100, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=3, max_position_embeddings=CONTEXT, eos_token_id=EOT,
                         bos_token_id=98, pad_token_id=0),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=32)
    cfg._attn_implementation = attn_implementation
    return CLIPModel(cfg).eval()


def pooled(out):
    """The embedding of a ``get_*_features`` result: a tensor in transformers 4.x, an output object in 5.x."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def make_tokens(lengths=(6, 9, 12), seed: int = 1) -> torch.Tensor:
    """Token ids (N, CONTEXT): start 98, random words, EOT 99 at position length-1, then padding 0."""
    g = torch.Generator().manual_seed(seed)
    tok = torch.zeros(len(lengths), CONTEXT, dtype=torch.long)
    for i, n in enumerate(lengths):
        tok[i, 0] = 98
        tok[i, 1:n - 1] = torch.randint(1, 90, (n - 2,), generator=g)
        tok[i, n - 1] = EOT
    return tok


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


class RouteLog(list):
    """Outcomes of one gradient route during a test, as ``GradECLIP(..., on_route=log)`` reports them: True for
    each call whose maps that route made, False for each call where it was chosen but failed its self-check (and
    the full backward made the maps)."""

    def __init__(self, route: str) -> None:
        super().__init__()
        self.route = route

    def __call__(self, report) -> None:
        if report.chosen == self.route:
            self.append(report.used == self.route)
