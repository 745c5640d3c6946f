"""The HuggingFace families of the coverage tests: one tiny random model per family, its texts and images.

Shared by tests/test_coverage_hf.py and tests/test_device_syncs.py (a support module: importing it skips the
importing test module when transformers is not installed).
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
T = transformers

IMAGE, PATCH = 48, 16
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE,
              patch_size=PATCH, initializer_range=0.05)
TEXT = dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=24, initializer_range=0.05)
BERT_TEXT = dict(TEXT, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


# per family: (config builder, model class, token ids, attention mask or None, words mask)
# words are the positions that must carry the text map; everything else must be exactly zero.
_CLIP_IDS = [[4, 11, 12, 13, 3, 0, 0, 0], [4, 21, 22, 3, 0, 0, 0, 0]]  # bos=4 ... eos=3, padding 0
_CLIP_MASK = [[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]]
_CLIP_WORDS = [[0, 1, 1, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0]]
_SIGLIP_IDS = [[11, 12, 13, 1, 1, 1, 1, 1], [21, 22, 1, 1, 1, 1, 1, 1]]  # SigLIP: pad = eos = 1, no mask
_SIGLIP_WORDS = [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]]
_SIGLIP2_IDS = [[0, 0, 0, 2, 11, 12, 13, 1], [0, 0, 0, 0, 2, 21, 22, 1]]  # Gemma: left padding 0, bos 2, eos 1
_SIGLIP2_MASK = [[0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1]]
_SIGLIP2_WORDS = [[0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1, 1, 0]]
_BERT_IDS = [[5, 11, 12, 13, 6, 0, 0, 0], [5, 21, 22, 6, 0, 0, 0, 0]]  # [CLS]=5 ... [SEP]=6, padding 0
_XLMR_IDS = [[0, 11, 12, 13, 2, 1, 1, 1], [0, 21, 22, 2, 1, 1, 1, 1]]  # <s>=0 ... </s>=2, padding 1


def _clip_cfg():
    return T.CLIPConfig(text_config=dict(TEXT, eos_token_id=3, bos_token_id=4, pad_token_id=0),
                        vision_config=VISION, projection_dim=16)


FAMILIES = {
    "clip": (_clip_cfg, T.CLIPModel, _CLIP_IDS, _CLIP_MASK, _CLIP_WORDS),
    "siglip": (lambda: T.SiglipConfig(text_config=dict(TEXT, pad_token_id=1, eos_token_id=1, bos_token_id=None),
                                      vision_config=VISION),
               T.SiglipModel, _SIGLIP_IDS, None, _SIGLIP_WORDS),
    "altclip": (lambda: T.AltCLIPConfig(text_config=dict(BERT_TEXT, project_dim=32, pad_token_id=1, bos_token_id=0,
                                                         eos_token_id=2), vision_config=VISION, projection_dim=16),
                T.AltCLIPModel, _XLMR_IDS, _CLIP_MASK, _CLIP_WORDS),
    "chinese_clip": (lambda: T.ChineseCLIPConfig(text_config=dict(BERT_TEXT, pad_token_id=0), vision_config=VISION,
                                                 projection_dim=16),
                     T.ChineseCLIPModel, _BERT_IDS, _CLIP_MASK, _CLIP_WORDS),
    "blip": (lambda: T.BlipConfig(text_config=dict(BERT_TEXT, encoder_hidden_size=32, pad_token_id=0,
                                                   bos_token_id=7, eos_token_id=6, sep_token_id=6),
                                  vision_config=VISION, image_text_hidden_size=16),
             T.BlipForImageTextRetrieval, _BERT_IDS, _CLIP_MASK, _CLIP_WORDS),
}
if hasattr(T, "Siglip2Model"):  # newer transformers only
    FAMILIES["siglip2"] = (
        lambda: T.Siglip2Config(text_config=dict(TEXT, pad_token_id=0, eos_token_id=1, bos_token_id=2),
                                vision_config=dict(VISION, num_patches=9)),
        T.Siglip2Model, _SIGLIP2_IDS, _SIGLIP2_MASK, _SIGLIP2_WORDS)
if hasattr(T, "MetaClip2Model"):  # transformers >= 4.56
    FAMILIES["metaclip2"] = (
        lambda: T.MetaClip2Config(text_config=dict(TEXT, eos_token_id=3, bos_token_id=4, pad_token_id=0),
                                  vision_config=VISION, projection_dim=16),
        T.MetaClip2Model, _CLIP_IDS, _CLIP_MASK, _CLIP_WORDS)
SDPA = [f for f in FAMILIES if f != "blip"]  # BLIP's attention is eager only in transformers


_CACHE = {}


def build(family, impl="eager"):
    key = (family, impl)
    if key not in _CACHE:
        cfg_fn, cls = FAMILIES[family][:2]
        torch.manual_seed(0)
        model = cls._from_config(cfg_fn(), attn_implementation=impl)
        if impl != "eager":  # the very same weights as the eager model
            model.load_state_dict(build(family, "eager").state_dict())
        _CACHE[key] = model.eval()
    return _CACHE[key]


def texts(family):
    _, _, ids, mask, words = FAMILIES[family]
    ids = torch.tensor(ids)
    mask = torch.ones_like(ids) if mask is None else torch.tensor(mask)
    return ids, (None if FAMILIES[family][3] is None else mask), torch.tensor(words, dtype=torch.bool)


def images(h=IMAGE, w=IMAGE, n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=g)


def text_inputs(family):
    ids, mask, _ = texts(family)
    return {"input_ids": ids} if mask is None else {"input_ids": ids, "attention_mask": mask}
