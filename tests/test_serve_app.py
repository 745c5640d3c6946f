"""``gradeclip serve`` over HTTP: the ``/explain`` endpoint through ``gradio_client``, simultaneous users, hostile
uploads refused while others are served, the queue limit, server-side paths out of reach, the default bind."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
httpx = pytest.importorskip("httpx")
from gradio_client import Client, handle_file  # noqa: E402
from fixtures import bomb_png  # noqa: E402
from serve_server import model_held, start  # noqa: E402

from captum_gradeclip.app import ServeLimits  # noqa: E402

UPLOAD_LIMIT = 150_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app, service = start(ServeLimits(max_upload_bytes=UPLOAD_LIMIT, concurrency=2, queue_size=8),
                         tmp_path_factory.mktemp("serve"))
    yield app, service
    app.close()
    service.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server[0].local_url, verbose=False)


@pytest.fixture(scope="module")
def scene(server):
    return str(server[1].draw_scene(seed=7))


def _pixels(item):
    return np.asarray(Image.open(item["image"]).convert("RGB"))


def test_binds_to_this_machine_without_a_share_link(server):
    app, _ = server
    assert app.server_name == "127.0.0.1" and app.local_url.startswith("http://127.0.0.1:")
    assert not app.share and app.share_url is None


def test_api_explain_returns_overlays_first(client, server, scene):
    overlays, words, npz, status = client.predict(handle_file(scene), "a red circle\na blue square",
                                                  api_name="/explain")
    direct = server[1].explain(scene, "a red circle\na blue square")
    assert [o["caption"] for o in overlays] == direct.captions
    for item, expected in zip(overlays, direct.overlays):
        np.testing.assert_array_equal(_pixels(item), expected)  # PNG: lossless
    assert words == direct.words_html
    np.testing.assert_array_equal(np.load(npz)["image_maps"], direct.explanation.image_maps)
    assert "Explained 2 prompt(s)" in status


def test_bad_input_is_a_message_and_the_server_keeps_serving(client, scene):
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match=r"unknown word\(s\) \['purple'\]"):
        client.predict(handle_file(scene), "a purple circle", api_name="/explain")
    with pytest.raises(AppError, match="no prompt"):
        client.predict(handle_file(scene), "\n", api_name="/explain")
    assert len(client.predict(handle_file(scene), "a red circle", api_name="/explain")[0]) == 1


def test_api_compare_with_ig(client, server, scene):
    pairs = client.predict(handle_file(scene), "a red circle", 16, 0, False, "native", "default",
                           api_name="/compare_with_ig")
    direct = server[1].compare_with_ig(scene, "a red circle", steps=16)
    assert [p["caption"].split(" (")[0] for p in pairs] == ["Grad-ECLIP", "Integrated Gradients, 16 steps"]
    np.testing.assert_array_equal(_pixels(pairs[0]), direct[0][0])
    np.testing.assert_array_equal(_pixels(pairs[1]), direct[1][0])


def test_four_simultaneous_requests_equal_sequential_ones(client, scene):
    prompt_sets = ["a red circle", "a blue square\na green triangle", "a yellow cross\na red circle\na cyan square",
                   "a magenta triangle"]
    sequential = [client.predict(handle_file(scene), p, api_name="/explain") for p in prompt_sets]
    jobs = [client.submit(handle_file(scene), p, api_name="/explain") for p in prompt_sets]
    together = [job.result(timeout=120) for job in jobs]
    for seq, par in zip(sequential, together):
        assert [o["caption"] for o in par[0]] == [o["caption"] for o in seq[0]]
        for a, b in zip(par[0], seq[0]):
            np.testing.assert_array_equal(_pixels(a), _pixels(b))
        assert par[1] == seq[1]


def test_hostile_uploads_refused_while_a_normal_request_succeeds(client, server, scene, tmp_path):
    from gradio_client.exceptions import AppError
    bomb = tmp_path / "bomb.png"  # 80 bytes that declare 20,000 x 20,000 pixels
    bomb.write_bytes(bomb_png())
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > UPLOAD_LIMIT
    url = server[0].local_url

    def oversized_upload():
        with open(big, "rb") as fh:  # straight to the server: gradio_client would refuse it before sending
            return httpx.post(url + "gradio_api/upload", files={"files": ("big.png", fh, "image/png")}, timeout=60)

    def bomb_request():
        with pytest.raises(AppError, match="decompression bomb") as info:
            client.predict(handle_file(str(bomb)), "a red circle", api_name="/explain")
        return str(info.value)

    with ThreadPoolExecutor(3) as pool:
        normal = client.submit(handle_file(scene), "a red circle\na blue square", api_name="/explain")
        refused_upload, refused_bomb = pool.submit(oversized_upload), pool.submit(bomb_request)
        assert len(normal.result(timeout=120)[0]) == 2
        response = refused_upload.result()
        assert response.status_code == 413 and "exceeded maximum allowed size of 150000 bytes" in response.text
        assert "bomb.png" in refused_bomb.result()
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # the client is told the limit too
        client.predict(handle_file(str(big)), "a red circle", api_name="/explain")


def test_server_side_paths_are_out_of_reach(server, scene):
    url = server[0].local_url

    def call(path):
        payload = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, "a red circle", 0, False, "native",
                            "default"]}
        event = httpx.post(url + "gradio_api/call/explain", json=payload, timeout=30).json()["event_id"]
        return httpx.get(url + f"gradio_api/call/explain/{event}", timeout=60).text

    with open(scene, "rb") as fh:  # the same raw call with an uploaded file works
        uploaded = httpx.post(url + "gradio_api/upload", files={"files": ("scene.png", fh, "image/png")},
                              timeout=60).json()[0]
    assert "event: complete" in call(uploaded)
    answer = call("/etc/passwd")
    assert "event: error" in answer and "root:" not in answer


def test_queue_limit_refuses_extra_requests(tmp_path):
    app, service = start(ServeLimits(queue_size=1, concurrency=1), tmp_path)
    try:
        client = Client(app.local_url, verbose=False)
        scene = str(service.draw_scene(seed=3))
        with model_held(service, seconds=4.0):  # a long request holds the model
            jobs = [client.submit(handle_file(scene), "a red circle", api_name="/explain") for _ in range(3)]
            outcomes = []
            for job in jobs:
                try:
                    outcomes.append(len(job.result(timeout=120)[0]))
                except Exception as err:  # noqa: BLE001 - the refusal's type is gradio_client's business
                    outcomes.append(f"{type(err).__name__}: {err}")
        refused = [o for o in outcomes if isinstance(o, str)]
        assert outcomes.count(1) == 2 and len(refused) == 1 and "Queue is full" in refused[0], outcomes
        # the refusal does not stop the server
        assert len(client.predict(handle_file(scene), "a red circle", api_name="/explain")[0]) == 1
    finally:
        app.close()
        service.close()


def test_latency_benchmark_runs(tmp_path, capsys):
    import json
    import os
    import sys
    benchmarks = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
    sys.path.insert(0, benchmarks)
    try:
        import serve_latency
    finally:
        sys.path.remove(benchmarks)
    out = tmp_path / "latency.json"
    rows = serve_latency.main(["--requests", "2", "--warmup", "0", "--out", str(out)])
    assert [r["case"] for r in rows] == ["service", "http", "http x4 (all 4 back)", "http x4 (per request)"]
    assert all(0 < r["median_s"] <= r["p90_s"] <= r["max_s"] for r in rows)
    assert json.loads(out.read_text())["rows"] == rows and "median s" in capsys.readouterr().out


def test_deploy_example_reads_model_and_limits_from_the_environment(monkeypatch):
    import os
    import sys
    examples = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")
    sys.path.insert(0, examples)
    try:
        import app as deploy
    finally:
        sys.path.remove(examples)
    monkeypatch.setenv("GRADECLIP_MAX_PROMPTS", "3")
    monkeypatch.setenv("GRADECLIP_TIME_LIMIT_S", "12.5")
    service = deploy.make_service()
    try:
        assert service.limits.max_prompts == 3 and service.limits.time_limit_s == 12.5
        assert service.lm.name.startswith("shapes-clip") and service.limits.queue_size == ServeLimits().queue_size
    finally:
        service.close()
    with pytest.raises(SystemExit, match="expected demo"):
        deploy.load_model("caffe:x", "cpu")


def _non_loopback_address():
    import socket
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.254.254.254", 9))  # no packet is sent: this only picks the interface a route would use
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


@pytest.mark.subprocess
def test_the_command_serves_this_machine_only_by_default(tmp_path):
    import os
    import subprocess
    import sys
    import time

    from serve_server import free_port
    port = free_port()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
               GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "captum_gradeclip.cli", "serve", "--demo", "--port", str(port)],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else ""
            time.sleep(0.5)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        scene = tmp_path / "scene.png"
        Image.new("RGB", (64, 64), (200, 30, 30)).save(scene)
        assert len(client.predict(handle_file(str(scene)), "a red circle", api_name="/explain")[0]) == 1
        other = _non_loopback_address()
        if other is not None:  # the same port on this machine's network address: nobody listens there
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://{other}:{port}/", timeout=5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_every_failure_becomes_a_message_for_the_page(caplog):
    import gradio as gr

    from captum_gradeclip.app.limits import RequestError
    from captum_gradeclip.app.ui import _guarded

    def fail(err):
        raise err
    for err, expected in [(RequestError("no prompt: type at least one"), "no prompt: type at least one"),
                          (ValueError("layer_rule must be one of"), "the request was refused: layer_rule must be"),
                          (RuntimeError("CUDA out of memory at 0x7f..."), "the explanation failed (RuntimeError)")]:
        with pytest.raises(gr.Error) as info:
            _guarded(fail, err)
        assert str(info.value.message).startswith(expected) and "0x7f" not in info.value.message
    assert "CUDA out of memory" in caplog.text  # the unexpected one is logged on the server, in full
    assert _guarded(lambda x: x + 1, 1) == 2
