"""The two Ray stages called in-process: decoding tasks and the model actor's batches (captions, errors)."""

import numpy as np
import pyarrow as pa
import pytest

from captum_gradeclip.scale.job import _row
from captum_gradeclip.scale.sources import list_source
from captum_gradeclip.scale.workers import Explainer, decode_batch
from fixtures import in_process_maps, write_scenes, write_truncated_jpeg

DEMO = dict(demo=True, hf=None, checkpoint=None, model="ViT-B-16", pretrained="openai")


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    """A CSV of 6 images: per-image captions (different for each image), one without caption, one caption out
    of the shapes vocabulary, one truncated JPEG."""
    root = tmp_path_factory.mktemp("captioned")
    paths = write_scenes(root / "img", 5, nested=False)
    write_truncated_jpeg(root / "img" / "broken.jpg", paths[0])
    lines = ["image,caption", "img/scene000.jpg,a red circle", "img/scene000.jpg,a blue square",
             "img/scene001.png,a green triangle", "img/scene002.jpg,", "img/scene003.png,a purple elephant",
             "img/scene004.jpg,a blue square", "img/broken.jpg,a red circle"]
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    return root, list_source(root / "list.csv")


def _decode(items, **kw):
    table = pa.Table.from_pylist([_row(0, i, it) for i, it in enumerate(items)])
    return decode_batch(table, image_size=64, patch=8, mode="native", max_pixels=10 ** 7, max_bytes=10 ** 7, **kw)


def test_decoding_matches_the_cli_and_records_bad_files(captioned):
    from captum_gradeclip.loading import prepare_image
    from captum_gradeclip.image_io import load_image
    root, items = captioned
    rows = _decode(items).to_pylist()
    assert [r["key"] for r in rows] == [it.key for it in items]
    first = np.frombuffer(rows[0]["pixels"], dtype=np.float32).reshape(rows[0]["shape"])
    assert np.array_equal(first, prepare_image(load_image(items[0].path), 64, 8, "native").numpy())
    assert rows[0]["shape"] == [3, 96, 64] and rows[1]["shape"] == [3, 64, 64]
    assert "truncated" in rows[-1]["error"] and rows[-1]["pixels"] == b""
    limited = decode_batch(pa.Table.from_pylist([_row(0, 0, items[0])]), image_size=64, patch=8, mode="native",
                           max_pixels=1000, max_bytes=10 ** 7).to_pylist()[0]
    assert "more than the limit of 1,000" in limited["error"]


def test_actor_batch_explains_each_image_against_its_own_texts(captioned):
    root, items = captioned
    explainer = Explainer(DEMO, prompts=["a red circle"], layers=None, single_head=False, word_maps=True,
                          device="cpu", threads=1)
    rows = explainer(_decode(items)).to_pylist()
    by_key = {r["key"]: r for r in rows}
    assert len(rows) == len(items)
    # the job's prompt first, then the image's captions not already among the prompts
    assert by_key["img/scene000.jpg"]["texts"] == ["a red circle", "a blue square"]
    assert by_key["img/scene002.jpg"]["texts"] == ["a red circle"]
    assert "purple" in by_key["img/scene003.png"]["error"] and "cannot be tokenized" in by_key["img/scene003.png"][
        "error"]
    assert "truncated" in by_key["img/broken.jpg"]["error"]
    good = {it.key: it for it in items if not by_key[it.key]["error"]}
    assert len(good) == 4
    ref = in_process_maps({k: root / k for k in good}, {k: by_key[k]["texts"] for k in good})
    for key in good:
        r = by_key[key]
        maps = np.frombuffer(r["maps"], dtype=np.float32).reshape(len(r["texts"]), *r["map_shape"])
        for t, text in enumerate(r["texts"]):
            score, ref_map, ref_words, ref_scores = ref[key, text]
            # batched with other images and texts here, one image at a time in the reference: float32 noise
            assert r["scores"][t] == pytest.approx(score, abs=1e-5)
            np.testing.assert_allclose(maps[t], ref_map, rtol=1e-4, atol=1e-6 * max(1.0, ref_map.max()))
            assert r["word_tokens"][t] == ref_words
            np.testing.assert_allclose(r["word_scores"][t], ref_scores, rtol=1e-4, atol=1e-6)


def test_actor_decoding_its_own_batches_gives_the_same_rows(captioned):
    """CPU workers get the undecoded rows and decode them themselves: the same rows as decoding tasks give."""
    root, items = captioned
    decode = dict(image_size=64, patch=8, mode="native", max_pixels=10 ** 7, max_bytes=10 ** 7)
    kwargs = dict(prompts=["a red circle"], layers=None, single_head=False, word_maps=True, device="cpu",
                  threads=1)
    raw = pa.Table.from_pylist([_row(0, i, it) for i, it in enumerate(items)])
    itself = Explainer(DEMO, decode=decode, **kwargs)(raw).to_pylist()
    given = Explainer(DEMO, **kwargs)(_decode(items)).to_pylist()
    assert itself == given
    assert "truncated" in itself[-1]["error"] and sum(1 for r in itself if not r["error"]) == 4


def test_actor_without_any_text_records_the_image(captioned):
    root, items = captioned
    explainer = Explainer(DEMO, prompts=[], layers=None, single_head=False, word_maps=False, device="cpu",
                          threads=1)
    rows = {r["key"]: r for r in explainer(_decode(items[:3])).to_pylist()}
    assert "no caption and no --text" in rows["img/scene002.jpg"]["error"]
    assert rows["img/scene001.png"]["texts"] == ["a green triangle"] and rows["img/scene001.png"]["word_tokens"] == []


def test_decoding_reads_tar_members_in_place(captioned, tmp_path):
    import tarfile
    root, items = captioned
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        tar.add(items[0].path, arcname="k0.jpg")
        tar.add(items[1].path, arcname="k1.png")
    shard_items = list_source(tmp_path / "shard.tar")
    from_tar, from_files = _decode(shard_items).to_pylist(), _decode(items[:2]).to_pylist()
    assert [r["key"] for r in from_tar] == ["shard.tar/k0", "shard.tar/k1"]
    for a, b in zip(from_tar, from_files):
        assert a["error"] == "" and a["shape"] == b["shape"] and a["pixels"] == b["pixels"]
