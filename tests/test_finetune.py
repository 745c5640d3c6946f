"""Grad-ECLIP-guided fine-tuning (captum_gradeclip.finetune): phrases, region pooling, losses, data, checkpoints,
the training loop (one process and torchrun / DDP) and resume."""

from __future__ import annotations

import csv
import doctest
import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from captum_gradeclip import GradECLIP, ImageTextSimilarity, MaskCLIPSimilarity
from captum_gradeclip.data import SCENE_WORDS, generate_scenes
from captum_gradeclip.finetune import (CheckpointError, DenseImageEncoder, WordListPhrases, clip_contrastive_loss,
                                       latest_checkpoint, load_checkpoint, normalize_maps, phrase_maps,
                                       pool_regions, region_phrase_loss, save_checkpoint)
from captum_gradeclip.finetune import checkpoint as ckpt_mod
from captum_gradeclip.finetune import data as data_mod
from captum_gradeclip.finetune import evaluate as eval_mod
from captum_gradeclip.finetune import losses as losses_mod
from captum_gradeclip.finetune import phrases as phrases_mod
from captum_gradeclip.finetune import regions as regions_mod
from captum_gradeclip.finetune import vocabulary as vocab_mod
from captum_gradeclip.finetune.data import CaptionTable, DataRowError, ShapesCaptions, StepBatches
from captum_gradeclip.finetune.phrases import extract_all
from captum_gradeclip.finetune.regions import box_weights, mask_weights
from captum_gradeclip.finetune.train import FineTuneConfig, learning_rate, load_finetuned, main, train
from captum_gradeclip.finetune.vocabulary import extend_shapes_clip
from captum_gradeclip.zoo import load_shapes_clip

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clip():
    return load_shapes_clip("open_clip_single")


# ------------------------------------------------------------------------------------------------ docstrings
@pytest.mark.parametrize("module", [phrases_mod, regions_mod, losses_mod, ckpt_mod, vocab_mod, data_mod])
def test_doctests(module) -> None:
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


# --------------------------------------------------------------------------------------------------- phrases
def test_word_list_phrases() -> None:
    extract = WordListPhrases()
    assert extract("a red circle, a blue square and a green cross") == ["red circle", "blue square", "green cross"]
    assert extract("Two circles and one cross") == ["circles", "cross"]
    assert extract("A small brown dog runs on the green grass.") == ["small brown dog", "green grass"]
    assert extract("a man holding a tennis racket near a white car") == ["man", "racket", "white car"]
    assert extract("a very big old red bus") == ["old red bus"]  # at most two adjectives, the nearest
    assert extract("nothing here") == []
    assert extract("a dog and a dog") == ["dog"]
    assert WordListPhrases(max_phrases=2)("a cat, a dog and a bird") == ["cat", "dog"]
    assert WordListPhrases(nouns={"tram"}, adjectives={"yellow"})("A YELLOW tram!") == ["yellow tram"]
    with pytest.raises(ValueError, match="max_phrases"):
        WordListPhrases(max_phrases=0)
    with pytest.raises(TypeError, match="phrase extractor"):
        extract_all(lambda c: [""], ["a dog"])


# ------------------------------------------------------------------------------------------- region pooling
def test_normalize_and_pool_hand_computed() -> None:
    maps = torch.tensor([[[[1.0, 0.0], [0.0, 3.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # (1, 2, 2, 2)
    w, ok = normalize_maps(maps)
    assert torch.allclose(w, torch.tensor([[[0.25, 0, 0, 0.75], [0, 0, 0, 0]]]))
    assert ok.tolist() == [[True, False]]
    dense = torch.tensor([[[1.0, 0.0], [9.0, 9.0], [9.0, 9.0], [0.0, 2.0]]], requires_grad=True)  # (1, 4, 2)
    r = pool_regions(dense, w)
    assert torch.allclose(r, torch.tensor([[[0.25, 1.5], [0.0, 0.0]]]))
    r[0, 0].sum().backward()
    assert torch.allclose(dense.grad[0, :, 0], torch.tensor([0.25, 0, 0, 0.75]))
    with pytest.raises(ValueError, match="do not match"):
        pool_regions(dense, torch.ones(1, 3))


def test_box_and_mask_weights_hand_computed() -> None:
    # 8 x 8 image, 2 x 2 grid of 4 x 4 patches; the box covers columns 2..5 of rows 0..3
    w = box_weights(torch.tensor([2.0, 0.0, 6.0, 4.0]), (8, 8), (2, 2))
    assert torch.allclose(w, torch.tensor([0.5, 0.5, 0.0, 0.0]))
    m = torch.zeros(8, 8, dtype=torch.bool)
    m[4:8, 0:4] = True
    m[4, 4] = True  # 1 of 16 pixels of the last patch
    assert torch.allclose(mask_weights(m, (2, 2)), torch.tensor([0.0, 0.0, 16.0, 1.0]) / 17)
    assert box_weights(torch.full((4,), float("nan")), (8, 8), (2, 2)).sum() == 0


def test_dense_encoder_matches_the_model_and_maskclip(clip) -> None:
    scenes = generate_scenes(3, seed=5)
    x = clip.normalize(scenes.images)
    enc = DenseImageEncoder(clip.model)
    emb, dense = enc(x)
    assert torch.allclose(emb, clip.model.encode_image(x), atol=1e-5)
    assert dense.shape == (3, 64, 128)
    texts = clip.encode_texts(clip.class_prompts())
    ref = MaskCLIPSimilarity(ImageTextSimilarity(clip.model, texts)).attribute(x, target=7)  # independent code
    mine = torch.relu(F.normalize(dense, dim=-1) @ texts[7]).reshape(3, 1, 8, 8)
    assert torch.allclose(ref, mine, atol=1e-5)
    dense.sum().backward()  # trains the image tower
    assert clip.model.visual.transformer.resblocks[-1].mlp.c_fc.weight.grad is not None
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in clip.model.modules())
    clip.model.zero_grad(set_to_none=True)


def test_phrase_maps_equal_per_phrase_attributions(clip) -> None:
    scenes = generate_scenes(2, seed=1)
    x = clip.normalize(scenes.images)
    ph = clip.encode_texts(["a red circle", "a blue square", "a green cross"])
    clip.model.train()
    try:
        maps = phrase_maps(clip.model, x, ph)
        assert clip.model.training and clip.model.visual.training  # modes restored
    finally:
        clip.model.eval()
    assert maps.shape == (2, 3, 8, 8) and not maps.requires_grad
    assert all(p.grad is None for p in clip.model.parameters())
    ge = GradECLIP(ImageTextSimilarity(clip.model, ph))
    for k in range(3):
        assert torch.allclose(maps[:, k:k + 1], ge.attribute(x, target=k), atol=1e-5)


# ------------------------------------------------------------------------------------------------------ losses
def test_clip_loss_hand_computed() -> None:
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    txt = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # normalised inside
    s = 2.0
    sim = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # cos(img_i, txt_j)
    row0 = -math.log(math.exp(s * 1.0) / (math.exp(s * 1.0) + math.exp(0.0)))
    row1 = -math.log(math.exp(s * 0.8) / (math.exp(s * 0.6) + math.exp(s * 0.8)))
    col0 = -math.log(math.exp(s * 1.0) / (math.exp(s * 1.0) + math.exp(s * 0.6)))
    col1 = -math.log(math.exp(s * 0.8) / (math.exp(0.0) + math.exp(s * 0.8)))
    expected = 0.5 * ((row0 + row1) / 2 + (col0 + col1) / 2)
    assert sim.shape == (2, 2)
    assert abs(float(clip_contrastive_loss(img, txt, s)) - expected) < 1e-6
    with pytest.raises(ValueError):
        clip_contrastive_loss(img, txt[:1], s)


def test_region_phrase_loss_hand_computed() -> None:
    regions = torch.tensor([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    phrases = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # phrase 2 has the same text as phrase 0
    targets = torch.tensor([0, 1, 2])
    ids = torch.tensor([7, 8, 7])
    tau = 0.5
    c = 1 / math.sqrt(2)
    # region 0 -> phrase 0; phrase 2 (same text) is left out: logits 1/tau, 0
    l0 = -math.log(math.exp(2.0) / (math.exp(2.0) + 1.0))
    # region 1 -> phrase 1: phrase 2 repeats phrase 0's text and counts once: logits 0, 2
    l1 = -math.log(math.exp(2.0) / (1.0 + math.exp(2.0)))
    # region 2 -> phrase 2; phrase 0 (same text) left out: logits c/tau (phrase 1), c/tau (phrase 2)
    l2 = math.log(2.0)
    w = torch.tensor([1.0, 2.0, 0.0])
    got = region_phrase_loss(regions, phrases, targets, ids, w, temperature=tau)
    assert abs(float(got) - (l0 + 2 * l1) / 3) < 1e-6
    got_all = region_phrase_loss(regions, phrases, targets, ids, temperature=tau)
    assert abs(float(got_all) - (l0 + l1 + l2) / 3) < 1e-6
    assert c > 0
    # without ids every phrase is a negative: region 0 sees phrase 2 (cos 1) as a negative
    no_ids = region_phrase_loss(regions[:1], phrases, targets[:1], temperature=tau)
    assert abs(float(no_ids) - (-math.log(math.exp(2.0) / (2 * math.exp(2.0) + 1.0)))) < 1e-6
    zero = region_phrase_loss(regions, phrases, targets, weights=torch.zeros(3))
    assert float(zero) == 0.0
    with pytest.raises(ValueError, match="temperature"):
        region_phrase_loss(regions, phrases, targets, temperature=0.0)
    with pytest.raises(ValueError, match="targets"):
        region_phrase_loss(regions, phrases, torch.tensor([0, 1, 3]))


# ----------------------------------------------------------------------------------------- vocabulary, shapes
def test_extended_vocabulary_keeps_old_texts(clip) -> None:
    before = {k: v.clone() for k, v in clip.model.state_dict().items()}
    new = extend_shapes_clip(clip, SCENE_WORDS, context_length=16)
    texts = ["a red circle", "the blue cross", "a photo of a cyan square"]
    assert torch.allclose(new.encode_texts(texts), clip.encode_texts(texts), atol=1e-5)
    x = clip.normalize(generate_scenes(2, seed=0).images)
    assert torch.equal(new.model.encode_image(x), clip.model.encode_image(x))
    ids = new.tokenize("a red circle is left of two crosses and a blue square")
    assert ids.shape == (1, 16) and int(ids.max()) == new.tokenizer.eot_id
    assert all(torch.equal(before[k], v) for k, v in clip.model.state_dict().items())  # shipped model untouched
    with pytest.raises(ValueError, match="context_length"):
        extend_shapes_clip(clip, SCENE_WORDS, context_length=4)


# --------------------------------------------------------------------------------------------------------- data
def _png(path: Path, value: int) -> Path:
    from PIL import Image
    Image.fromarray(np.full((20, 30, 3), value, dtype=np.uint8)).save(path)
    return path


def _csv(path: Path, rows) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows(rows)
    return path


def test_caption_table_sources(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / f"im{i}.png", 40 * i)
        (tmp_path / f"im{i}.txt").write_text(f"a red circle number {i}\n")
    folder = CaptionTable(tmp_path, 16)
    assert len(folder) == 3 and folder[1][1] == "a red circle number 1"
    img, _ = folder[2]
    assert img.shape == (3, 16, 16) and abs(float(img.mean()) - 80 / 255) < 1e-3
    table = CaptionTable(_csv(tmp_path / "d.csv", [["im0.png", "a dog"], [str(tmp_path / "im1.png"), "a cat"]]), 16)
    assert [table[i][1] for i in range(2)] == ["a dog", "a cat"]
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"image": ["im0.png", "im2.png"], "caption": ["x", "y"]}), tmp_path / "d.parquet")
    assert CaptionTable(tmp_path / "d.parquet", 16)[1][1] == "y"


def test_bad_rows_are_named(tmp_path: Path) -> None:
    _png(tmp_path / "ok.png", 10)
    path = _csv(tmp_path / "d.csv", [["ok.png", "a dog"], ["ok.png", "  "]])
    with pytest.raises(DataRowError, match=r"d\.csv line 3: empty caption"):
        CaptionTable(path, 16)
    path = _csv(tmp_path / "e.csv", [["ok.png", "a dog"], ["gone.png", "a cat"]])
    with pytest.raises(DataRowError, match=r"e\.csv line 3: image not found: .*gone\.png"):
        CaptionTable(path, 16)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    table = CaptionTable(_csv(tmp_path / "f.csv", [["ok.png", "a dog"], ["broken.png", "a cat"]]), 16)
    with pytest.raises(DataRowError, match=r"f\.csv line 3: cannot read image .*broken\.png"):
        table[1]
    folder = tmp_path / "folder"
    folder.mkdir()
    _png(folder / "ok.png", 10)
    (folder / "ok.txt").write_text("a dog")
    _png(folder / "lonely.png", 20)
    with pytest.raises(DataRowError, match=r"lonely\.png.*empty caption"):
        CaptionTable(folder, 16)
    (tmp_path / "g.csv").write_text("path,text\nok.png,a dog\n")
    with pytest.raises(ValueError, match="lacks the column"):
        CaptionTable(tmp_path / "g.csv", 16)


def test_step_batches_split_the_global_batch() -> None:
    one = StepBatches(20, 8, seed=3)
    two = [StepBatches(20, 8, seed=3, rank=r, world_size=2) for r in range(2)]
    for step in range(5):
        assert one.indices(step) == two[0].indices(step) + two[1].indices(step)
    epoch0 = one.indices(0) + one.indices(1)
    assert len(set(epoch0)) == 16  # no repeats within an epoch
    assert list(StepBatches(20, 8, seed=3, start=2, stop=4)) == [one.indices(2), one.indices(3)]
    with pytest.raises(ValueError, match="multiple"):
        StepBatches(20, 7, seed=0, world_size=2)


def test_shapes_captions_are_reproducible() -> None:
    a, b = ShapesCaptions(50, seed=1), ShapesCaptions(50, seed=1)
    assert torch.equal(a[7][0], b[7][0]) and a[7][1] == b[7][1]
    assert not torch.equal(ShapesCaptions(50, seed=2)[7][0], a[7][0])
    scene = a.scene(7)
    assert a[7][1].count(" a ") + 1 == int(scene.num_objects[0])  # "a X, a Y and a Z": one "a" per object


# -------------------------------------------------------------------------------------------------- checkpoints
def _tiny_state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.9, 0.95))
    model(torch.ones(4, 3)).pow(2).sum().backward()
    opt.step()
    return model, opt


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model, opt = _tiny_state()
    path = save_checkpoint(tmp_path, 5, model, opt, {"config": {"a": 1}})
    ck = load_checkpoint(path)
    m2 = torch.nn.Linear(3, 2)
    o2 = torch.optim.AdamW(m2.parameters(), lr=0.5)
    ck.restore(m2, o2)
    assert ck.step == 5 and ck.extra == {"config": {"a": 1}}
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), m2.parameters()))
    s1, s2 = opt.state_dict(), o2.state_dict()
    assert s2["param_groups"][0]["betas"] == (0.9, 0.95) and s2["param_groups"][0]["lr"] == 0.1
    for i in s1["state"]:
        for k, v in s1["state"][i].items():
            assert torch.equal(v, s2["state"][i][k])
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(CheckpointError, match="does not fit"):
        ck.restore(torch.nn.Linear(3, 3))


def test_truncated_checkpoint_is_detected_and_the_previous_one_used(tmp_path: Path) -> None:
    model, opt = _tiny_state()
    save_checkpoint(tmp_path, 1, model, opt, keep=3)
    with torch.no_grad():
        model.weight += 1
    save_checkpoint(tmp_path, 2, model, opt, keep=3)
    tensors = tmp_path / "step_000002.safetensors"
    data = tensors.read_bytes()
    tensors.write_bytes(data[: len(data) // 2])  # cut mid-write
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "step_000002.json")
    with pytest.warns(UserWarning, match="step_000002.*truncated"):
        ck = latest_checkpoint(tmp_path)
    assert ck is not None and ck.step == 1
    tensors.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit flipped
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tensors)
    (tmp_path / "step_000003.json").write_text('{"format": "captum_gradeclip.fine')  # JSON cut mid-write
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path / "step_000003.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert latest_checkpoint(tmp_path).step == 1


def test_checkpoint_keeps_the_newest(tmp_path: Path) -> None:
    model, opt = _tiny_state()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, opt, keep=2)
    assert ckpt_mod.list_checkpoints(tmp_path) == [2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000002.json", "step_000002.safetensors",
                                                         "step_000003.json", "step_000003.safetensors"]


def test_no_unsafe_deserialisation_anywhere() -> None:
    """No code path unpickles: no pickle.load(s), and torch.load only with weights_only=True."""
    offenders = []
    for folder in ("captum_gradeclip", "benchmarks", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if re.search(r"\b(c?pickle|dill|joblib)\.loads?\s*\(", text) or "Unpickler" in text:
                offenders.append(f"{path}: unpickling")
            for m in re.finditer(r"torch\.load\s*\(", text):
                call = text[m.end():m.end() + 300]
                depth, end = 1, 0
                while depth and end < len(call):
                    depth += {"(": 1, ")": -1}.get(call[end], 0)
                    end += 1
                if not re.search(r"weights_only\s*=\s*True", call[:end]):
                    offenders.append(f"{path}: torch.load without weights_only=True")
    assert not offenders, offenders


# -------------------------------------------------------------------------------------------- training loop
def _config(out: Path, **kw) -> FineTuneConfig:
    base = dict(out=str(out), loss="grad_eclip", steps=4, batch_size=8, lr=5e-4, warmup=1, dataset_size=64,
                save_every=2, progress=False, log_every=1)
    base.update(kw)
    return FineTuneConfig(**base)


def _params(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    full = train(_config(tmp_path / "full"))
    first = train(_config(tmp_path / "part", steps=2, save_every=2))
    assert first.checkpoint is not None and first.checkpoint.name == "step_000002.json"
    resumed = train(_config(tmp_path / "part", resume="auto"))
    assert resumed.start_step == 2 and len(resumed.losses) == 2
    assert [r["loss"] for r in resumed.losses] == [r["loss"] for r in full.losses[2:]]
    a, b = _params(full.model), _params(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the checkpoint rebuilds the same model
    again = load_finetuned(tmp_path / "part" / "checkpoints")
    assert all(torch.equal(a[k], v) for k, v in _params(again.model).items())
    lines = [json.loads(line) for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]


def test_learning_rate_schedule() -> None:
    cfg = FineTuneConfig(lr=1.0, warmup=2, steps=10)
    assert [learning_rate(s, cfg) for s in (0, 1)] == [0.5, 1.0]
    assert abs(learning_rate(6, cfg) - 0.5) < 1e-9 and learning_rate(10, cfg) == 0.0


def test_bad_row_during_training_keeps_what_was_written(tmp_path: Path) -> None:
    colors = ("red", "green", "blue", "yellow")
    rows = [[_png(tmp_path / f"im{i}.png", 25 * i).name, f"a {colors[i % 4]} circle"] for i in range(8)]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rows.append(["broken.png", "a blue square"])
    data = _csv(tmp_path / "data.csv", rows)  # broken.png is row index 8, line 10
    seed = next(s for s in range(100) if 8 in StepBatches(9, 4, s).indices(1))  # hit at the second step
    cfg = _config(tmp_path / "run", model="shapes", data=str(data), steps=2, batch_size=4, save_every=1, seed=seed,
                  loss="global")
    with pytest.raises(DataRowError, match=r"data\.csv line 10: cannot read image .*broken\.png"):
        train(cfg)
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_000001.json")
    assert ck.step == 1
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 1
    # a bad row found when the table is opened stops the run before anything is written
    missing = _csv(tmp_path / "missing.csv", rows[:3] + [["nowhere.png", "a cat"]])
    assert main(["--data", str(missing), "--out", str(tmp_path / "run2"), "--steps", "1", "--no-progress"]) == 2
    assert not (tmp_path / "run2" / "checkpoints").exists()


def test_caption_outside_the_shapes_vocabulary_is_a_bad_row(tmp_path: Path) -> None:
    rows = [[_png(tmp_path / f"im{i}.png", 30 * i).name, "a red circle"] for i in range(3)]
    rows.append([rows[0][0], "a purple hexagon"])
    cfg = _config(tmp_path / "run", data=str(_csv(tmp_path / "d.csv", rows)), steps=1, batch_size=4, loss="global")
    with pytest.raises(DataRowError, match=r"cannot be tokenized: unknown word\(s\) \['purple', 'hexagon'\]"):
        train(cfg)


def test_wrong_resume_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        train(_config(tmp_path / "x", resume=str(tmp_path)))


def test_evaluate_shapes_runs(clip) -> None:
    from captum_gradeclip.finetune.train import load_trainable
    t = load_trainable(FineTuneConfig(), torch.device("cpu"))
    scores = eval_mod.evaluate_shapes(t.model, t.tokenize, t.normalize, n_multi=8, n_single=8, batch_size=4)
    assert set(scores) == {"region_top1", "mask_top1", "zero_shot_top1", "pointing_game"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert t.model.training  # modes restored


def _torchrun(out: Path, steps: int, loss: str, nproc: int) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "tests" / "finetune_worker.py"), str(out), str(steps), loss]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.subprocess
def test_torchrun_two_processes(tmp_path: Path) -> None:
    """2 ranks (gloo): parameters stay identical across ranks, the loss falls, and the run equals one process
    on the same global batch."""
    from safetensors.torch import load_file

    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from finetune_worker import main as worker
    finally:
        sys.path.pop(0)
    _torchrun(tmp_path / "ddp", 6, "grad_eclip", 2)
    worker(str(tmp_path / "one"), 6, "grad_eclip")
    r0, r1 = (load_file(str(tmp_path / "ddp" / f"rank{r}.safetensors")) for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    info = json.loads((tmp_path / "ddp" / "rank0.json").read_text())
    assert info["world_size"] == 2
    losses = [r["loss"] for r in info["losses"]]
    assert losses[-1] < losses[0] and info["losses"][-1]["region"] < info["losses"][0]["region"]
    single = load_file(str(tmp_path / "one" / "rank0.safetensors"))
    worst = max(float((single[k] - r0[k]).abs().max()) for k in r0)
    assert worst < 1e-4, worst
    one_losses = [r["loss"] for r in json.loads((tmp_path / "one" / "rank0.json").read_text())["losses"]]
    assert np.allclose(one_losses, losses, atol=1e-4)
    assert (tmp_path / "ddp" / "checkpoints" / "step_000006.json").is_file()
    assert "step 6" in (tmp_path / "ddp" / "train.log").read_text()


@pytest.mark.slow
def test_benchmark_script_smoke(tmp_path: Path) -> None:
    """benchmarks/finetune.py on one process: a checkpoint and results.json with the four fractions; --cost;
    --collect builds the documented table and figure."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_finetune", ROOT / "benchmarks" / "finetune.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    common = ["--batch-size", "8", "--n-eval", "6", "--no-progress"]
    assert bench.main(["--steps", "0", "--out", str(tmp_path / "base")] + common) == 0
    for loss in ("global", "grad_eclip"):
        assert bench.main(["--loss", loss, "--steps", "2", "--out", str(tmp_path / loss)] + common) == 0
        res = json.loads((tmp_path / loss / "results.json").read_text())
        assert all(0.0 <= res[k] <= 1.0 for k in bench.KEYS) and res["seconds_per_step"] > 0
        assert (tmp_path / loss / "checkpoints" / "step_000002.json").is_file()
    assert bench.main(["--cost", "1", "--batch-size", "8", "--out", str(tmp_path / "cost")]) == 0
    out = tmp_path / "finetune.json"
    assert bench.main(["--collect", *(str(tmp_path / d) for d in ("base", "global", "grad_eclip")), "--json",
                       str(out), "--cost-file", str(tmp_path / "cost" / "cost.json"), "--figure",
                       str(tmp_path / "maps.png")]) == 0
    table = json.loads(out.read_text())
    assert all(set(bench.KEYS) <= set(table[k]) for k in ("base", "global", "grad_eclip"))
    assert (tmp_path / "maps.png").stat().st_size > 1000


def test_dense_encoder_on_a_config_built_open_clip_and_unsupported_towers() -> None:
    import open_clip

    from captum_gradeclip import UnsupportedModelError
    from fixtures import make_open_clip
    model = make_open_clip()
    x = torch.randn(2, 3, 32, 32)
    emb, dense = DenseImageEncoder(model)(x)
    assert torch.allclose(emb, model.encode_image(x), atol=1e-5) and dense.shape == (2, 16, 32)
    texts = torch.randn(3, 32)
    ref = MaskCLIPSimilarity(ImageTextSimilarity(model, texts)).attribute(x, target=2)
    mine = torch.relu(F.normalize(dense, dim=-1) @ F.normalize(texts[2], dim=-1)).reshape(2, 1, 4, 4)
    assert torch.allclose(ref, mine, atol=1e-5)
    torch.manual_seed(0)
    resnet = open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=64, layers=[1, 1, 1, 1], width=8),
                            text_cfg=dict(context_length=8, vocab_size=50, width=32, heads=2, layers=1))
    with pytest.raises(UnsupportedModelError, match="region features"):
        DenseImageEncoder(resnet)


def test_fine_tuning_can_start_from_the_default_shapes_model(tmp_path) -> None:
    """``model="shapes:open_clip"``: the default 6-block model (its context of 20 kept, nothing to extend), trained
    for two steps and checkpointed; ``"shapes"`` stays the 0.1 model; unknown names are refused."""
    from captum_gradeclip.finetune.train import SHAPES_MODELS, load_trainable
    from captum_gradeclip.zoo import load_shapes_clip
    assert FineTuneConfig().shapes_model == "open_clip_single" and FineTuneConfig(model="ViT-B-16").shapes_model is None
    t = load_trainable(FineTuneConfig(model="shapes:open_clip"), torch.device("cpu"))
    shipped = load_shapes_clip("open_clip")
    assert t.description["context_length"] == 20 and len(t.model.transformer.resblocks) == 6
    ids = t.tokenize(["there is a red circle left of a blue square"])
    assert torch.equal(ids, shipped.tokenize(["there is a red circle left of a blue square"]))
    with torch.no_grad():
        assert torch.allclose(t.model.encode_text(ids), shipped.model.encode_text(ids), atol=1e-6)
    res = train(_config(tmp_path / "run", model="shapes:open_clip", steps=2, save_every=2, loss="global"))
    assert len(res.losses) == 2 and res.checkpoint is not None
    for bad in ("shapes:hf", "shapes:open_clip_rich"):
        with pytest.raises(ValueError, match="unknown shipped shapes model"):
            FineTuneConfig(model=bad).check()
    assert SHAPES_MODELS == ("open_clip_single", "open_clip")
