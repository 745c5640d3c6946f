#!/usr/bin/env python
"""PROTOTYPE, not part of the library: two text-side speed-ups measured for docs/performance.md.

1. Crop (``cropped()``): a causal text tower pooled at the EOS token does not look at the positions after it, so
   the token ids can be cut to ``max(EOS position) + 1`` before explaining, and the maps padded back with zeros.
   Same maps (up to float rounding); every part of the pass gets ~77 / (longest caption) times cheaper.
   Not valid with ``single_head=True`` (the authors normalise lambda over every context position).
2. Row tail (``RowTailGradECLIP``): no autograd graph over the sequence at all. The no-grad forward records, for
   every explained block, its attention input (all rows) and its output at the query row. Gradients then come
   from a graph over the QUERY ROW ONLY: from the first explained block on, the query row is re-run through the
   later blocks, attending to the recorded keys/values of the other rows (rows before the query never see it:
   causal; rows after it are never seen by it), with a zero probe added at each explained block's output. One
   batched backward per chunk of targets then gives dS/dy at every explained layer, each target costing a
   backward through ~8 single-row blocks instead of 8 full-sequence blocks.

open_clip CLIP text tower only, default layers (a contiguous tail of blocks), ``single_head=False``.

    PYTHONPATH=. python benchmarks/prototypes/text_fast_paths.py --threads 1
"""
import argparse
import contextlib
import os
import sys
import time

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from captum_gradeclip import GradECLIP, TextImageSimilarity  # noqa: E402
from captum_gradeclip.adapters.base import check_tokens  # noqa: E402
from captum_gradeclip.adapters.open_clip import OpenClipTextTower  # noqa: E402
from speed import PeakMemory, captions  # noqa: E402


def _validate(self, inputs, *extra):
    check_tokens(inputs)
    if inputs.shape[1] > self.model.positional_embedding.shape[0]:
        raise ValueError("token ids longer than the context")


def _encode(self, inputs, *extra):
    """encode_text for ids of any length <= context (causal mask and positions cut to that length)."""
    m = self.model
    length = inputs.shape[1]
    cast = m.transformer.get_cast_dtype()
    x = m.token_embedding(inputs).to(cast) + m.positional_embedding[:length].to(cast)
    x = m.transformer(x, attn_mask=None if m.attn_mask is None else m.attn_mask[:length, :length])
    x = m.ln_final(x)
    x = text_global_pool(x, inputs, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
    return m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection


@contextlib.contextmanager
def cropped():
    """Let the open_clip text tower take ids shorter than the context (what a core change would do)."""
    saved = OpenClipTextTower.validate, OpenClipTextTower.encode
    OpenClipTextTower.validate, OpenClipTextTower.encode = _validate, _encode
    try:
        yield
    finally:
        OpenClipTextTower.validate, OpenClipTextTower.encode = saved


def crop_explain(ge, tokens):
    keep = int(ge.tower.query(tokens).max()) + 1
    return F.pad(ge.attribute_all(tokens[:, :keep]), (0, tokens.shape[1] - keep))


class RowTailGradECLIP(GradECLIP):
    def _attribute(self, inputs, additional_forward_args, select):
        tower = self.tower
        tower.validate(inputs)
        assert tower.side == "text" and tower.causal and not self.single_head
        blocks = tower.blocks()
        which = {id(m): i for i, m in enumerate(self.attention_modules)}
        first = next(j for j, b in enumerate(blocks) if id(b.attn) in which)
        assert all(id(b.attn) in which for b in blocks[first:]), "prototype: explained blocks = a contiguous tail"
        with torch.inference_mode(False):
            layout = tower.layout(inputs)
            records = self._forward(inputs, (), layout, (blocks[first], None))  # no graph, no probes
            records.pop("__scores__")
            n = inputs.shape[0]
            qpos = layout.query
            rows = torch.arange(n)
            with torch.enable_grad():
                x = records[str(which[id(blocks[first].attn)])].block_in[:, 0]
                probes = [None] * len(self.attention_modules)
                for j, b in enumerate(blocks[first:]):
                    rec = records[str(which[id(b.attn)])]
                    if j == 0:
                        y = rec.y_query[:, 0]
                    else:
                        m = b.attn
                        with torch.no_grad():
                            _, kh, vh = rec.adapter.qkv(rec.args, rec.kwargs)  # (N, H, L, d)
                        h = b.ln_1(x)
                        qr, kr, vr = F.linear(h, m.in_proj_weight, m.in_proj_bias).chunk(3, dim=-1)
                        H = m.num_heads
                        qr, kr, vr = (t.reshape(n, H, 1, -1) for t in (qr, kr, vr))
                        sel = F.one_hot(qpos, kh.shape[2]).to(kh.dtype)[:, None, :, None]  # (N, 1, L, 1)
                        kk = kh * (1 - sel) + kr * sel
                        vv = vh * (1 - sel) + vr * sel
                        logits = (qr @ kk.transpose(-1, -2)) * qr.shape[-1] ** -0.5  # (N, H, 1, L)
                        later = torch.arange(kh.shape[2])[None, :] > qpos[:, None]
                        logits = logits.masked_fill(later[:, None, None, :], float("-inf"))
                        o = (logits.softmax(-1) @ vv).reshape(n, -1)
                        y = m.out_proj(o)
                    p = torch.zeros_like(y, requires_grad=True)
                    probes[which[id(b.attn)]] = p
                    x = x + b.ls_1(y + p)
                    x = x + b.ls_2(b.mlp(b.ln_2(x)))
                md = tower.model
                emb = md.ln_final(x) @ md.text_projection
                scores = self.forward_func.score(emb)
                columns = select(scores)
                chosen = scores.gather(1, columns)
                k = chosen.shape[1]
                chunks = [self._batched_grad(chosen[:, i:i + self.chunk_size], probes, True)
                          for i in range(0, k, self.chunk_size)]
            grads = [torch.cat([c[i] for c in chunks], 0)[:, :, None, :] for i in range(len(probes))]
            return self._maps(records, grads, layout)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cases", default="100x1,1x100", help="CAPTIONSxIMAGES, comma separated")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer("ViT-B-16")

    def cpu_time(fn, reps=2):
        best = float("inf")
        for _ in range(reps):
            c = time.process_time()
            fn()
            best = min(best, time.process_time() - c)
        return best

    def peak(fn):
        with PeakMemory(torch.device("cpu")) as m:
            fn()
        return m.peak_mib

    for case in args.cases.split(","):
        c, m = (int(v) for v in case.split("x"))
        tok = tokenizer(captions(c))
        img = F.normalize(torch.randn(m, 512, generator=torch.Generator().manual_seed(0)), dim=-1)
        scorer = TextImageSimilarity(model, img)
        ge, rt = GradECLIP(scorer), RowTailGradECLIP(scorer)

        def forward():
            with torch.no_grad():
                return F.normalize(model.encode_text(tok), dim=-1) @ img.t()

        ref = ge.attribute_all(tok)
        methods = {"plain forward (77 tokens)": forward, "attribute_all (now)": lambda: ge.attribute_all(tok),
                   "row tail": lambda: rt.attribute_all(tok)}
        with cropped():
            methods["crop"] = lambda: crop_explain(ge, tok)
            methods["crop + row tail"] = lambda: crop_explain(rt, tok)
            keep = int(ge.tower.query(tok).max()) + 1
            print(f"## {c} caption(s) x {m} image(s), threads {args.threads}, crop to {keep} of {tok.shape[1]} tokens")
            print("| method | CPU s | vs plain forward (speed) | peak RSS MiB | max abs diff / max |")
            print("|---|---:|---:|---:|---:|")
            base = None
            for name, fn in methods.items():
                fn()  # warm-up
                t = cpu_time(fn)
                base = base or t
                diff = "" if name.startswith("plain") else f"{((fn() - ref).abs().max() / ref.abs().max()).item():.1e}"
                print(f"| {name} | {t:.3f} | {base / t:.2f}x | {peak(fn):.0f} | {diff} |", flush=True)


if __name__ == "__main__":
    main()
