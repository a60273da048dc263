"""The Space as an attacker and an unlucky user meet it (issue 13): only uploaded files (and the bundled examples)
are read, never a FIFO, a device or a link; each request is bounded in time; messages carry no server path;
the upload cap holds when ``demo`` is imported and launched; ``/load_results`` answers one message for every
refused path; a cold server answers 8 concurrent first requests.

Raw HTTP calls (``POST /gradio_api/call/<endpoint>``) send what a hostile client can send: a file payload that
was never uploaded. An audit hook records every file this process opens, so "never opened" is checked, not
assumed (the in-process server runs in this process's threads).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _audit import recording_opens
from PIL import Image
from test_space import APP_PATH, EXAMPLES, _free_port, launch, load_app, results_folder, tiny_models  # noqa: F401

pytestmark = pytest.mark.slow

@pytest.fixture
def opened():
    """The paths this process opens during the test."""
    with recording_opens() as paths:
        yield paths


@pytest.fixture(scope="module")
def app():
    return load_app()


@pytest.fixture(scope="module")
def server(app, tiny_models):  # noqa: F811 - the fixture imported from test_space
    demo = app.build_demo(tiny_models)
    url = launch(demo)
    yield demo, url
    demo.close()


@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    """A server file outside every upload folder: a valid PNG, so that reading it would succeed."""
    path = tmp_path_factory.mktemp("server_files") / "secret.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
    return path


def call(url: str, endpoint: str, data: list, timeout: float = 60) -> tuple[str, object]:
    """A raw API call: ``POST /gradio_api/call/<endpoint>``, then the event stream; ``(event, data)``."""
    import httpx

    event_id = httpx.post(f"{url}gradio_api/call/{endpoint}", json={"data": data}, timeout=30).json()["event_id"]
    event, payload = None, None
    with httpx.stream("GET", f"{url}gradio_api/call/{endpoint}/{event_id}", timeout=timeout) as response:
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                payload = json.loads(line.split(":", 1)[1])
                break
    return event, payload


def assert_refused(event: str, payload: object, *secrets: str) -> str:
    assert event == "error", payload  # the old app answered "complete" with the file's size, mode and hash
    text = json.dumps(payload)
    for s in secrets:
        assert s not in text
    assert "Traceback" not in text and "site-packages" not in text
    return text


# -- only uploaded files ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("meta", [True, False])
def test_analyze_refuses_a_path_that_was_not_uploaded(server, secret, opened, meta):
    """With FileData ``meta`` Gradio itself refuses the path (its error carries no message); without it, the
    payload reached the old app untouched and the file was read."""
    payload = {"path": str(secret), "orig_name": "cat.png"}
    if meta:
        payload["meta"] = {"_type": "gradio.FileData"}
    for endpoint in ("analyze", "attention_maps"):
        event, data = call(server[1], endpoint, [payload, "tiny-vit", 1, "mean over heads"])
        text = assert_refused(event, data, str(secret), str(secret.parent))
        assert meta or "only reads files uploaded" in text
    event, data = call(server[1], "analyze", [str(secret), "tiny-vit", 1, "mean over heads"])  # a bare string
    assert_refused(event, data, str(secret))
    climbing = f"{EXAMPLES}/{os.path.relpath(secret, EXAMPLES)}"  # .../examples/../../../tmp/.../secret.png
    event, data = call(server[1], "analyze", [{"path": climbing}, "tiny-vit", 1, 1])
    assert_refused(event, data, str(secret))
    assert not [p for p in opened if Path(p).name == secret.name], opened


def test_uploads_and_examples_still_work(server):
    """The normal path: gradio_client uploads the file first; an example is read from the bundled folder."""
    from gradio_client import Client, handle_file

    client = Client(server[1], verbose=False)
    summary = client.predict(handle_file(str(EXAMPLES / "cat.jpg")), "tiny-vit", 1, "mean over heads",
                             api_name="/analyze")[5]
    assert summary["image"]["name"] == "cat.jpg" and summary["num_layers"] == 5
    event, data = call(server[1], "analyze", [{"path": str(EXAMPLES / "cat.jpg")}, "tiny-vit", 1, 1])
    assert event == "complete" and data[5]["image"]["sha256"] == summary["image"]["sha256"]


@pytest.fixture
def upload_folder():
    """A folder inside Gradio's upload folder, where a hostile name could point."""
    import gradio.utils

    folder = Path(gradio.utils.get_upload_folder()) / "hostile"
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    for path in folder.iterdir():
        path.unlink()


def test_links_out_of_the_upload_folder_are_never_followed(server, secret, opened, upload_folder):
    (upload_folder / "out.png").symlink_to(secret)  # a link inside the upload folder to a file outside it
    (upload_folder / "in.png").symlink_to(EXAMPLES / "cat.jpg")  # uploads are never links: refused too
    for name in ("out.png", "in.png"):
        event, data = call(server[1], "analyze", [{"path": str(upload_folder / name)}, "tiny-vit", 1, 1])
        assert_refused(event, data, str(secret), str(upload_folder))
    assert not [p for p in opened if Path(p).name == secret.name], opened


def test_fifos_and_devices_are_never_opened(server, upload_folder):
    """A FIFO blocked the old app's request (and one of its analysis slots) until something wrote to it."""
    fifo = upload_folder / "fifo.png"
    os.mkfifo(fifo)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(
        zip(("event", "data"), call(server[1], "analyze", [{"path": str(fifo)}, "tiny-vit", 1, 1]))))
    worker.start()
    worker.join(60)
    if worker.is_alive():  # the old app: unblock it before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(60)
        pytest.fail("the request on a FIFO never returned")
    assert_refused(result["event"], result["data"], str(upload_folder))
    event, data = call(server[1], "analyze", [{"path": "/dev/zero"}, "tiny-vit", 1, 1])
    assert_refused(event, data, "/dev/zero")


def test_read_image_refuses_links_and_fifos(app, tmp_path, secret):
    import gradio as gr

    (tmp_path / "link.png").symlink_to(secret)
    os.mkfifo(tmp_path / "fifo.png")
    for name in ("link.png", "fifo.png"):
        with pytest.raises(gr.Error, match="is not an image that can be read"):
            app.read_image(str(tmp_path / name))


# -- bounded time ----------------------------------------------------------------------------------------------
def test_a_stuck_request_is_answered_and_frees_its_slot(app, server, monkeypatch):
    """A request that never finishes is answered with an error after REQUEST_TIMEOUT_S, and the app keeps
    answering others."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    demo, url = server
    release = threading.Event()
    real_get = demo.registry.get

    def stuck(choice):
        if choice == "tiny-deit":
            release.wait(120)
        return real_get(choice)

    monkeypatch.setattr(app, "REQUEST_TIMEOUT_S", 3.0, raising=False)
    monkeypatch.setattr(demo.registry, "get", stuck)
    app.clear_caches(demo)
    outcome: dict = {}

    def ask():
        try:
            Client(url, verbose=False).predict(handle_file(str(EXAMPLES / "digit_0.png")), "tiny-deit", 1,
                                               "mean over heads", api_name="/analyze")
        except AppError as err:
            outcome["error"] = str(err)

    worker = threading.Thread(target=ask)
    worker.start()
    worker.join(60)
    try:
        assert not worker.is_alive(), "the stuck request was never answered"
        assert "took longer than 3 s" in outcome["error"]
        # another user is served meanwhile
        summary = Client(url, verbose=False).predict(handle_file(str(EXAMPLES / "digit_3.png")), "tiny-vit", 1,
                                                     "mean over heads", api_name="/analyze")[5]
        assert summary["model"] == "tiny-vit"
    finally:
        release.set()
        worker.join(60)


# -- messages ------------------------------------------------------------------------------------------------
def test_messages_carry_no_server_path(app, tiny_models, tmp_path):  # noqa: F811
    """A broken model installed on the server: the client learns what is wrong, not where it lives."""
    import shutil

    import gradio as gr

    broken = tmp_path / "srv" / "models" / "broken-vit"
    shutil.copytree(tiny_models["tiny-vit"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    demo = app.build_demo({"broken": str(broken)})
    analyze = next(fn.fn for fn in demo.fns.values() if fn.api_name == "analyze")
    with pytest.raises(gr.Error) as info:
        analyze({"path": str(EXAMPLES / "cat.jpg")}, "broken", 1, "mean over heads")
    message = info.value.message
    assert "model.safetensors" in message and "corrupt" in message
    assert str(tmp_path) not in message and "/srv/models" not in message, message
    assert app.scrub_paths("No such file: '/home/me/x/model.bin' in /srv/data/ (see https://hf.co/a/b)") == \
        "No such file: 'model.bin' in <folder> (see https://hf.co/a/b)"


# -- the upload cap ------------------------------------------------------------------------------------------
def test_upload_cap_holds_when_demo_is_imported_and_launched(app, tmp_path):
    """Spaces and tests import ``demo`` and call ``demo.launch()`` themselves, without ``max_file_size``."""
    import httpx

    _, url, _ = app.demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, ssr_mode=False)
    try:
        big, small = tmp_path / "big.png", tmp_path / "small.png"
        big.write_bytes(os.urandom(21 * 1024 * 1024))
        small.write_bytes((EXAMPLES / "cat.jpg").read_bytes())
        with big.open("rb") as f:
            refused = httpx.post(f"{url}gradio_api/upload", files={"files": f}, timeout=60)
        assert refused.status_code == 413, (refused.status_code, refused.text[:200])
        with small.open("rb") as f:
            accepted = httpx.post(f"{url}gradio_api/upload", files={"files": f}, timeout=60)
        assert accepted.status_code == 200
    finally:
        app.demo.close()


# -- /load_results -------------------------------------------------------------------------------------------
def test_load_results_answers_one_message_for_every_refused_path(server, results_folder, tmp_path):  # noqa: F811
    """Whether a path exists, is a file, a folder of something else or an empty folder: the same answer."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "summary.json").write_text("{not json")
    answers = set()
    for source in ("/nonexistent", "/etc", "/etc/hostname", str(tmp_path / "empty"), str(tmp_path / "junk"),
                   str(tmp_path / "missing")):
        event, data = call(server[1], "load_results", [source, "centered_similarity", ""])
        assert event == "error", data
        answers.add(re.sub(r"'[^']*'", "<source>", data["error"]))  # the echo of the client's own text aside
    assert len(answers) == 1, answers
    event, data = call(server[1], "load_results", [str(results_folder[0]), "centered_similarity", ""])
    assert event == "complete"


def test_load_results_on_a_space_never_looks_at_local_paths(app, monkeypatch, tmp_path):
    import gradio as gr

    monkeypatch.setattr(app, "ALLOW_LOCAL_PATHS", False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "user" / "results").mkdir(parents=True)
    loader = app.ResultsLoader()
    monkeypatch.setattr(app, "_load_reports", lambda source, revision: (_ for _ in ()).throw(OSError("offline")))
    answers = set()
    for source in ("user/results", "user/missing"):  # an existing relative folder, and one that is not there
        with pytest.raises(gr.Error) as info:
            loader(source)
        answers.add(info.value.message.replace(source, "<source>"))
    assert len(answers) == 1, answers
    for source in ("/etc", "./user/results", "~"):
        with pytest.raises(gr.Error, match="local paths are not accepted"):
            loader(source)


# -- a cold start --------------------------------------------------------------------------------------------
def test_eight_concurrent_requests_on_a_cold_server(tiny_models, tmp_path):  # noqa: F811
    """A fresh ``python spaces_app/app.py``: its first 8 requests arrive at once (two models) and all succeed.
    The old app failed 2-3 of 8 with ``cannot import name 'AutoConfig' from 'transformers'``."""
    import httpx
    from gradio_client import Client, handle_file

    port = _free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", HF_ISI_SPACE_MODELS=";".join(f"{n}={tiny_models[n]}" for n in
                                                                 ("tiny-vit", "tiny-deit")))
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(APP_PATH)], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(url + "gradio_api/info", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        clients = [Client(url, verbose=False) for _ in range(8)]  # connected before the first request
        files = sorted(EXAMPLES.iterdir())[:8]
        results: list = [None] * 8
        barrier = threading.Barrier(8)

        def ask(i: int) -> None:
            barrier.wait()
            try:
                results[i] = clients[i].predict(handle_file(str(files[i])), ("tiny-vit", "tiny-deit")[i % 2], 1,
                                                "mean over heads", api_name="/analyze")[5]
            except Exception as err:  # noqa: BLE001 - reported below
                results[i] = err

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        failures = [r for r in results if not isinstance(r, dict)]
        assert not failures, (failures, log.read_text()[-3000:])
        assert len({r["image"]["sha256"] for r in results}) == 8
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
