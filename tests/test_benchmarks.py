"""Smoke runs of the benchmark scripts on a small open_clip config, so that they keep working.

Figures are not asserted beyond what must hold on any machine (the scripts measure; docs/performance.md reports):
every method of every cell ran, the maps-per-second bookkeeping is consistent, and the tensor-memory proxy of the
default image layer stays within the issue's 1.5x of a no-grad forward (it is deterministic, not timed).
"""

import json
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, BENCHMARKS)
    try:
        import memory
        import speed
        yield speed, memory
    finally:
        sys.path.remove(BENCHMARKS)


def test_speed_script_runs_every_method(scripts, tmp_path, capsys):
    speed, _ = scripts
    out = tmp_path / "speed.json"
    speed.main(["--model", "ViT-B-32", "--image-size", "64", "--batch-sizes", "2", "--texts", "3", "--captions", "3",
                "--caption-images", "3", "--repeats", "1", "--warmup", "0", "--ig-steps", "2", "--ig-cells", "2x3",
                "--threads", "1", "--out", str(out)])
    assert "attribute_all" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    cells = {(r["side"], r["n"], r["k"]) for r in rows}
    assert cells == {("image", 2, 3), ("text", 3, 1), ("text", 1, 3)}
    for side, n, k in cells:
        methods = {r["method"] for r in rows if (r["side"], r["n"], r["k"]) == (side, n, k)}
        assert {"forward", "attribute_all", "loop"} <= methods
    image = [r for r in rows if r["side"] == "image"]
    assert {r["method"] for r in image} == {"forward", "attribute_all", "loop", "ig"}
    for r in rows:
        assert r["best_s"] > 0 and r["maps_per_s"] == pytest.approx(r["inputs_per_s"] * r["maps_per_call"]
                                                                     / r["inputs_per_call"])


def test_memory_script_default_layer_within_goal(scripts, tmp_path):
    _, memory = scripts
    out = tmp_path / "memory.json"
    memory.main(["--model", "ViT-B-32", "--batch-size", "2", "--texts", "3", "--dtypes", "fp32",
                 "--cases", "image,image4,images", "--threads", "1", "--out", str(out)])
    rows = {r["case"].split(",")[0] + ("4" if "4 blocks" in r["case"] else ""): r
            for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"image", "image4", "text"}
    assert all(r["forward_mib"] > 0 and r["attribute_all_mib"] > 0 for r in rows.values())
    assert rows["image"]["ratio"] < 1.5  # the default layer: about a no-grad forward's peak
    assert rows["image4"]["ratio"] > rows["image"]["ratio"]  # a graph over 4 blocks costs more


def test_live_tensor_bytes_counts_what_is_alive():
    """The memory proxy on a hand-checked case: two 4 MB tensors alive together, then one freed."""
    import torch
    sys.path.insert(0, BENCHMARKS)
    try:
        from memory import LiveTensorBytes
    finally:
        sys.path.remove(BENCHMARKS)
    weight = torch.ones(1024, 1024)  # exists before: not counted, nor its views
    with LiveTensorBytes() as live:
        a = weight * 2  # 4 MiB
        b = a + 1  # 4 MiB, both alive
        del a
        c = b.t()  # a view: nothing new
        d = c * 3  # 4 MiB, with b alive (a was freed)
    assert live.peak == 2 * 4 * 2 ** 20
    del b, d


def test_text_rules_script_measures_both_rules(tmp_path, capsys):
    sys.path.insert(0, BENCHMARKS)
    try:
        import text_rules
    finally:
        sys.path.remove(BENCHMARKS)
    out = tmp_path / "text_rules.json"
    text_rules.main(["--n", "12", "--models", "open_clip", "--layers", "default,1", "--out", str(out)])
    assert "| open_clip | 6 | no | sum_then_relu (paper) |" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert {(r["layers"], r["single_head"], r["layer_rule"]) for r in rows} == {
        (layers, single_head, rule) for layers in (6, 1) for single_head in (False, True)
        for rule in ("sum_then_relu", "relu_then_sum")}
    for r in rows:
        assert all(0 <= r[c] <= 1 for c in text_rules.COLUMNS if c != "content-word share (non-empty)")
    by = {(r["layers"], r["single_head"], r["layer_rule"]): r for r in rows}
    for single_head in (False, True):  # one layer: the rules agree; more: ReLU per layer never empties more maps
        one = [by[(1, single_head, rule)] for rule in ("sum_then_relu", "relu_then_sum")]
        assert {k: v for k, v in one[0].items() if k not in ("layer_rule", "ms per map")} == \
            {k: v for k, v in one[1].items() if k not in ("layer_rule", "ms per map")}
        empty = {rule: by[(6, single_head, rule)]["empty maps"] for rule in ("sum_then_relu", "relu_then_sum")}
        assert empty["relu_then_sum"] <= empty["sum_then_relu"]


def test_legrad_cost_script_times_every_method(scripts, capsys):
    import legrad_cost
    result = legrad_cost.main(["--model", "ViT-S-32", "--image-size", "64", "--batch", "2", "--threads", "1",
                               "--repeats", "1"])
    names = [r["method"] for r in result["rows"]]
    assert names[0] == "forward (no grad)" and len(names) == 8
    assert {"LeGrad (last layer)", "LeGrad (all 12 layers)", "Grad-ECLIP (all 12 layers)"} <= set(names)
    assert all(r["ms per map"] > 0 for r in result["rows"])
    assert "| LeGrad (last 3 layers) |" in capsys.readouterr().out


def test_analyses_script_runs_legrad_beside_grad_eclip(scripts, tmp_path):
    import analyses
    assert analyses.main(["--models", "open_clip_single", "--n", "2", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())["models"]["open_clip_single"]
    pointing = res["multi_object_pointing"]
    for name in ("last 3 layers", "LeGrad, last layer", "LeGrad, last 3 layers", "LeGrad, all layers"):
        for label in ("strict", "tolerance"):
            assert len(pointing[f"{name}, {label}"]["hit_rate"]) == 4
    assert {"last layer", "LeGrad, last 3 layers"} <= set(res["binding"])
    same = res["binding"]["last 3 layers"]["binding_accuracy"] == res["binding"]["LeGrad, last 3 layers"][
        "binding_accuracy"]
    assert same  # the model's similarities do not depend on the explainer
    assert len(list(tmp_path.glob("*.png"))) == 4


def test_analyses_script_runs_relations_and_correspondence_on_the_default_model(scripts, tmp_path):
    import analyses
    assert analyses.main(["--models", "open_clip", "--n", "3", "--out", str(tmp_path),
                          "--figure-prefix", "rich"]) == 0
    res = json.loads((tmp_path / "results.json").read_text())["models"]["open_clip"]
    assert {"last layer", "last 3 layers", "LeGrad, last 3 layers"} == set(res["relations"])
    r = res["relations"]["last layer"]
    assert r["n"] == 3 and 0.0 <= r["accuracy"] <= 1.0 and sum(r["true_energy"]) == pytest.approx(1.0, abs=1e-3)
    assert r["accuracy"] == res["relations"]["LeGrad, last 3 layers"]["accuracy"]  # the model's, not the maps'
    c = res["correspondence"]["last 3 layers"]
    assert c["named_energy"] + c["unnamed_energy"] + c["background_energy"] == pytest.approx(1.0, abs=1e-3)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        f"rich_{s}.png" for s in ("binding", "correspondence", "layers", "pointing", "relations", "words")]


def test_rich_training_captions_are_true_of_their_scenes(scripts):
    """Hand-checked: a caption is a positive of exactly the scenes it is true of; swapped relations are not."""
    import train_shapes_clip as T
    from captum_gradeclip.data.shapes import generate_scenes
    scenes = generate_scenes(1, num_objects=2, seed=3)
    f = T.scene_facts(scenes, 0)
    (a, b) = sorted(f["classes"], key=lambda c: f["centers"][c][0])  # a is left of b or vertically apart
    rel = T.relation(f["centers"][a], f["centers"][b])
    assert T.caption_holds(("relation", a, rel, b), f) and not T.caption_holds(("relation", b, rel, a), f)
    assert T.caption_holds(("single", a), f) and T.caption_holds(("list", frozenset({a, b})), f)
    assert not T.caption_holds(("list", frozenset({a})), f)
    assert T.caption_holds(("count", f["counts"]), f) and sum(f["counts"]) == 2
    tok = T.ShapesTokenizer(T.RICH_WORDS, T.RICH_CONTEXT_LENGTH)
    x, ids, pos = T.make_rich_batch(24, 0.25, seed=11, tok=tok)
    assert x.shape[0] == 24 and ids.shape[0] == pos.shape[1] >= 24 and bool(pos.diagonal().all())
    # every text is a positive of its scene and of every other scene it is true of, of no other
    assert int(pos.sum()) > 24


def test_rich_training_runs_and_saves_a_loadable_model(scripts, tmp_path):
    import train_shapes_clip as T
    from captum_gradeclip.zoo import shapes_clip_from_files
    T.main(["--arch", "open_clip", "--captions", "rich", "--init", "open_clip_single", "--name", "tiny", "--steps", "2",
            "--batch-size", "16", "--warmup", "1", "--eval-n", "24", "--eval-every", "0", "--out", str(tmp_path)])
    clip = shapes_clip_from_files(tmp_path / "tiny.safetensors", tmp_path / "tiny.json")
    assert clip.tokenizer.context_length == T.RICH_CONTEXT_LENGTH and "left" in clip.tokenizer.words
    assert clip.tokenize("a simple image with a red circle, a blue square, a green cross and a cyan triangle").shape \
        == (1, T.RICH_CONTEXT_LENGTH)
    cfg = json.loads((tmp_path / "tiny.json").read_text())
    assert cfg["training"]["captions"] == "rich" and "relation_swap_acc" in cfg["metrics"]


@pytest.mark.parametrize("name", ["open_clip_single", "hf_single"])
def test_growing_a_shipped_model_keeps_its_features(scripts, name):
    """``--init`` with more blocks, words and context: the new blocks start as the identity, so the grown model
    computes the shipped model's image and text features (the default models were trained from such a start)."""
    import torch

    import train_shapes_clip as T
    from captum_gradeclip.data.shapes import generate_scenes
    from captum_gradeclip.zoo import load_shapes_clip
    old = load_shapes_clip(name)
    new = T.grow_shapes_clip(old, T.RICH_WORDS, T.RICH_CONTEXT_LENGTH, 6, 5)
    assert T.block_positions(4, 6) == [0, 2, 3, 5] and T.block_positions(4, 5) == [0, 1, 3, 4]
    blocks = (new.model.visual.transformer.resblocks, new.model.transformer.resblocks) if new.kind == "open_clip" \
        else (new.model.vision_model.encoder.layers, new.model.text_model.encoder.layers)
    assert [len(b) for b in blocks] == [6, 5]
    assert new.tokenizer.context_length == T.RICH_CONTEXT_LENGTH and "left" in new.tokenizer.words
    images = generate_scenes(3, seed=8).images
    texts = ["a red circle", "a photo of a blue cross", "the green square"]
    assert torch.allclose(new.encode_images(images), old.encode_images(images), atol=1e-6)
    assert torch.allclose(new.encode_texts(texts), old.encode_texts(texts), atol=1e-6)
    assert new.encode_texts(["there is a red circle left of a blue square"]).shape == (1, 128)
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(new.model.parameters(), old.model.parameters()))
    with pytest.raises(ValueError, match="cannot grow"):
        T.grow_shapes_clip(old, (), 0, 3, 4)


def test_rich_caption_styles_can_be_weighted(scripts):
    """``--styles``: only relation captions -> every scene of 2+ objects brings one swapped twin (a hard negative);
    bad specifications are refused with the accepted styles."""
    import argparse

    import train_shapes_clip as T
    assert T.parse_styles("single=0.2, relation=0.8") == (("single", 0.2), ("relation", 0.8))
    for bad, message in (("colour=1", "unknown caption style"), ("relation", "needs a weight"),
                         ("relation=-1", "negative"), ("relation=0", "positive weight")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            T.parse_styles(bad)
    tok = T.ShapesTokenizer(T.RICH_WORDS, T.RICH_CONTEXT_LENGTH)
    x, ids, pos = T.make_rich_batch(16, 0.0, seed=5, tok=tok, styles=(("relation", 1.0),))
    from captum_gradeclip.data.shapes import generate_scenes
    multi = int((generate_scenes(16, num_objects=(1, 4), seed=5).num_objects > 1).sum())
    assert ids.shape[0] == 16 + multi and pos.shape == (16, 16 + multi)
