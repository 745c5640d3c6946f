"""``gradeclip explain-dataset`` on a real local Ray of 2 CPUs, 2 model workers: the maps equal in-process
``attribute_all``, re-runs are idempotent, lost or partial files are redone, a truncated JPEG is recorded, a worker
killed mid-run costs nothing. One Ray instance is shared by the module."""

import json
import os
import shutil
import signal

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from captum_gradeclip.cli import main  # noqa: E402
from captum_gradeclip.scale import ModelSpec, explain_dataset, read_results  # noqa: E402
from fixtures import in_process_maps, write_scenes, write_truncated_jpeg  # noqa: E402

PROMPTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning",
             log_to_driver=bool(os.environ.get("SCALE_LOG")))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    paths = write_scenes(root, 9)
    write_truncated_jpeg(root / "sub" / "broken.jpg", paths[0])
    return root


def _argv(folder, out):
    return ["explain-dataset", str(folder), "--out", str(out), "--demo", "--text", PROMPTS[0], "--text",
            PROMPTS[1], "--word-maps", "--workers", "2", "--readers", "1", "--batch-size", "2",
            "--images-per-file", "3"]


@pytest.fixture(scope="module")
def first_run(local_ray, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "maps_out"
    assert main(_argv(folder, out)) == 0
    return out


def _pairs(out):
    return {(r["image"], r["text"]): r for r in read_results(out).to_pylist()}


@pytest.mark.subprocess
def test_maps_equal_in_process_attribute_all(first_run, folder):
    rows = read_results(first_run).to_pylist()
    keys = sorted({r["image"] for r in rows})
    assert len(keys) == 9 and "sub/broken.jpg" not in keys
    assert len(rows) == len({(r["image"], r["text"]) for r in rows}) == 9 * len(PROMPTS)  # one row per pair
    ref = in_process_maps({k: folder / k for k in keys}, {k: PROMPTS for k in keys})
    for r in rows:
        score, ref_map, ref_words, ref_scores = ref[r["image"], r["text"]]
        heat = np.asarray(r["map"], dtype=np.float32).reshape(r["map_shape"])
        # batches of 2 on the workers against one image at a time here: float32 noise only
        assert r["score"] == pytest.approx(score, abs=1e-5)
        np.testing.assert_allclose(heat, ref_map, rtol=1e-4, atol=1e-6 * max(1.0, ref_map.max()))
        assert r["word_tokens"] == ref_words
        np.testing.assert_allclose(r["word_scores"], ref_scores, rtol=1e-4, atol=1e-6)
    manifest = json.loads((first_run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["images"] == 10 and manifest["files"] == 4
    assert manifest["model_name"].startswith("shapes-clip") and manifest["versions"]["ray"] == ray.__version__


@pytest.mark.subprocess
def test_workers_decoding_their_own_batches_write_the_same_rows(first_run, folder, tmp_path):
    """Without ``readers`` CPU workers decode their own batches (no decoding tasks): the same rows and errors as
    the first run, whose maps equal the in-process ones."""
    out = tmp_path / "fused"
    summary = explain_dataset(folder, out, texts=PROMPTS, model=ModelSpec(demo=True), word_maps=True, workers=2,
                              batch_size=2, images_per_file=3, progress=False)
    assert summary.images_explained == 10 and summary.errors == 1
    assert (out / "errors.jsonl").read_text() == (first_run / "errors.jsonl").read_text()
    fused, first = _pairs(out), _pairs(first_run)
    assert fused.keys() == first.keys() and len(read_results(out)) == len(first)
    for pair, row in fused.items():
        assert row["score"] == pytest.approx(first[pair]["score"], abs=1e-6)
        np.testing.assert_allclose(row["map"], first[pair]["map"], rtol=1e-5, atol=1e-7)
        assert row["word_tokens"] == first[pair]["word_tokens"]
        np.testing.assert_allclose(row["word_scores"], first[pair]["word_scores"], rtol=1e-5, atol=1e-7)


def test_decoding_tasks_only_for_gpu_workers_or_when_asked():
    from captum_gradeclip.scale.job import _decoding_tasks
    assert _decoding_tasks(None, 2, gpu=False) == 0  # CPU workers decode their own batches
    assert _decoding_tasks(None, 2, gpu=True) == 4  # 2 per GPU worker
    assert _decoding_tasks(3, 2, gpu=False) == 3 and _decoding_tasks(1, 2, gpu=True) == 1




@pytest.mark.subprocess
def test_truncated_jpeg_is_recorded_and_the_rest_done(first_run):
    errors = [json.loads(line) for line in (first_run / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and errors[0]["image"] == "sub/broken.jpg" and "truncated" in errors[0]["error"]
    assert (first_run / errors[0]["file"]).is_file()  # the part to delete to try the image again
    assert json.loads((first_run / "manifest.json").read_text())["errors"] == 1


@pytest.mark.subprocess
def test_rerun_is_idempotent(first_run, folder, capsys):
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (first_run / "maps").iterdir()}
    assert main(_argv(folder, first_run)) == 0
    assert "4 file(s) already done, 0 image(s) explained now" in capsys.readouterr().out
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (first_run / "maps").iterdir()} == before


@pytest.mark.subprocess
def test_resume_after_a_lost_and_a_partial_file(first_run, folder, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(first_run, out)
    parts = sorted((out / "maps").iterdir())
    parts[0].unlink()                                       # lost
    parts[2].write_bytes(parts[2].read_bytes()[:200])       # partial (as a non-atomic copy would leave it)
    argv = _argv(folder, out)
    argv[argv.index("--workers") + 1] = "1"  # not part of the job: any number of workers may resume it
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "not a complete part file" in printed and "2 file(s) already done" in printed
    again, expected = _pairs(out), _pairs(first_run)
    assert again.keys() == expected.keys() and len(read_results(out)) == len(expected)
    for key, row in expected.items():
        np.testing.assert_allclose(again[key]["map"], row["map"], rtol=1e-5, atol=1e-7)
    assert (out / "errors.jsonl").read_text() == (first_run / "errors.jsonl").read_text()


@pytest.mark.subprocess
def test_a_different_job_in_the_same_folder_is_refused(first_run, folder, capsys):
    argv = _argv(folder, first_run)
    argv[argv.index(PROMPTS[1])] = "a green triangle"
    assert main(argv) == 2
    assert "different job (it differs in texts)" in capsys.readouterr().err


def _parent(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _explainer_processes():
    """PIDs of this test's model workers: processes below this one that Ray titled after the actor's class."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"MapBatches(Explainer)" not in f.read():
                    continue
            pid = int(entry)
            while pid > 1 and pid != os.getpid():
                pid = _parent(pid)
            if pid == os.getpid():
                found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.mark.subprocess
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the worker processes through /proc (Linux)")
def test_a_worker_killed_mid_run_loses_nothing_and_duplicates_nothing(local_ray, tmp_path):
    source = tmp_path / "many"
    write_scenes(source, 16, seed=5, nested=False)
    killed = []

    def kill_one_worker(path):
        if killed:
            return
        pids = _explainer_processes()
        assert pids, "no model worker process found"
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])

    out = tmp_path / "out"
    summary = explain_dataset(source, out, texts=["a red circle"], model=ModelSpec(demo=True), workers=2,
                              readers=1, batch_size=1, images_per_file=2, progress=False,
                              on_file_written=kill_one_worker)
    assert killed and summary.files == 8 and summary.images_explained == 16 and summary.errors == 0
    rows = read_results(out).to_pylist()
    assert sorted(r["image"] for r in rows) == sorted(f"scene{i:03d}.{'png' if i % 2 else 'jpg'}" for i in range(16))


@pytest.mark.parametrize("change, message", [
    (lambda argv, tmp: argv.__setitem__(1, str(tmp / "missing")), "dataset source not found"),
    (lambda argv, tmp: argv.__setitem__(argv.index("--workers") + 1, "0"), "workers must be a positive"),
    (lambda argv, tmp: argv.__setitem__(argv.index(PROMPTS[0]), "a purple elephant"), "unknown word"),
    (lambda argv, tmp: argv.__setitem__(argv.index(PROMPTS[0]), " "), "empty prompt"),
])
def test_bad_input_is_one_line_and_leaves_nothing(folder, tmp_path, capsys, change, message):
    out = tmp_path / "out"
    argv = _argv(folder, out)
    change(argv, tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gradeclip: error:") and message in err[0]
    assert not out.exists()


def test_missing_ray_names_the_extra(folder, tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    assert main(_argv(folder, tmp_path / "out")) == 2
    assert "pip install 'captum-gradeclip[scale]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.subprocess
def test_an_interrupted_run_keeps_its_files_and_resumes(first_run, folder, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(first_run, out)
    for part in sorted((out / "maps").iterdir())[1:3]:
        part.unlink()

    def interrupt(path):
        raise KeyboardInterrupt  # Ctrl-C once the first missing file is written

    with pytest.raises(KeyboardInterrupt):
        explain_dataset(folder, out, texts=PROMPTS, model=ModelSpec(demo=True), word_maps=True, workers=1,
                        readers=1, batch_size=2, images_per_file=3, progress=False, on_file_written=interrupt)
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    assert len(list((out / "maps").iterdir())) == 3  # the file written before the interruption is kept
    assert main(_argv(folder, out)) == 0
    assert _pairs(out).keys() == _pairs(first_run).keys() and len(read_results(out)) == len(_pairs(first_run))
