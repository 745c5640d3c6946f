"""The dataset job's output folder: atomic parts, the done-set, the manifest guard (no Ray needed)."""

import json

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from captum_gradeclip.scale.sources import Item  # noqa: E402
from captum_gradeclip.scale.store import (OutputFolder, OutputFolderError, atomic_write, pairs_table,  # noqa: E402
                                          plan_shards, read_results)


def _items(n):
    return [Item(key=f"img{i}.png", path=f"/data/img{i}.png") for i in range(n)]


def _result(key, texts, h=2, w=3, error=""):
    maps = np.arange(len(texts) * h * w, dtype=np.float32).reshape(len(texts), h, w) if not error else None
    return {"key": key, "texts": texts if not error else [], "scores": [0.5] * len(texts) if not error else [],
            "maps": maps.tobytes() if maps is not None else b"", "map_shape": [h, w] if not error else [],
            "word_tokens": [], "word_scores": [], "error": error}


def test_pairs_table_one_row_per_pair_in_order():
    table, errors = pairs_table([_result("a", ["t1", "t2"]), _result("b", [], error="truncated"),
                                 _result("c", ["t1"], h=1, w=2)], word_maps=False)
    rows = table.to_pylist()
    assert [(r["image"], r["text"]) for r in rows] == [("a", "t1"), ("a", "t2"), ("c", "t1")]
    assert rows[1]["map"] == [6, 7, 8, 9, 10, 11] and rows[1]["map_shape"] == [2, 3]
    assert rows[2]["map"] == [0, 1] and errors == [{"image": "b", "error": "truncated"}]
    assert table.schema.names == ["image", "text", "score", "map", "map_shape"]


def test_shards_are_deterministic_and_fingerprinted():
    a, b = plan_shards(_items(5), 2), plan_shards(_items(5), 2)
    assert [len(s.items) for s in a] == [2, 2, 1] and [s.name for s in a] == [s.name for s in b]
    changed = plan_shards(_items(4) + [Item(key="other.png", path="/data/other.png")], 2)
    assert [s.name for s in changed][:2] == [s.name for s in a][:2] and changed[2].name != a[2].name


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")

    def fail(path):
        path.write_text("half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_done_set_skips_complete_parts_and_redoes_the_rest(tmp_path):
    folder = OutputFolder(tmp_path)
    shards = plan_shards(_items(6), 2)
    folder.pending(shards)  # creates maps/
    for shard in shards:
        folder.write_part(shard, pairs_table([_result(it.key, ["t"]) for it in shard.items], False)[0], [])
    part2 = folder.maps / shards[2].name
    part2.write_bytes(part2.read_bytes()[:100])  # a partial file under a planned name (a non-atomic copy)
    (folder.maps / ".part-000001-0000000000000000.parquet.123-abc.tmp").write_bytes(b"crash")
    stale = folder.maps / "part-000009-0123456789abcdef.parquet"
    stale.write_bytes((folder.maps / shards[0].name).read_bytes())
    pending, notes = folder.pending(shards)
    assert [s.index for s in pending] == [2]
    assert sorted(p.name for p in folder.maps.iterdir()) == [shards[0].name, shards[1].name]
    assert len(notes) == 3 and any("not a complete part file" in n for n in notes)
    assert read_results(tmp_path).num_rows == 4


def test_errors_travel_with_their_part(tmp_path):
    folder = OutputFolder(tmp_path)
    shards = plan_shards(_items(3), 2)
    folder.pending(shards)
    folder.write_part(shards[1], pairs_table([_result("img2.png", [], error="bad")], False)[0],
                      [{"image": "img2.png", "error": "bad"}])
    expected = [{"image": "img2.png", "error": "bad", "file": f"maps/{shards[1].name}"}]
    assert folder.collect_errors() == expected
    assert [json.loads(line) for line in (tmp_path / "errors.jsonl").read_text().splitlines()] == expected


def test_a_folder_of_another_job_is_refused_untouched(tmp_path):
    folder = OutputFolder(tmp_path)
    folder.write_manifest({"job": {"texts": ["a dog"], "layers": None}})
    folder.check_job({"texts": ["a dog"], "layers": None})
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(OutputFolderError, match="differs in layers, texts"):
        folder.check_job({"texts": ["a cat"], "layers": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="is a file"):
        OutputFolder(tmp_path / "file").check_job({})
