"""08_serve.py over real HTTP: the studio started on a free port in a background thread, with the shipped
data/pretrained/tiny.pt (a flow checkpoint without dit.i2v: no image, at most its trained 9 frames) and with a tiny
random pyramid checkpoint (which takes a first frame), talked to with urllib as a browser or a script would."""
import base64
import dataclasses
import http.client
import importlib
import io
import json
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch
from PIL import Image

import sample
from data.config import Config
from data.tokenizer import Tokenizer

serve = importlib.import_module("08_serve")
PROMPT = "digit 3 is moving up and down"


def write_checkpoint(path, objective="pyramid", i2v=False):
    """A dit.pt as train.py writes it, tiny and untrained: 32x32 gray frames, 9 frames, 4x4 latents of 4 channels."""
    cfg = dataclasses.asdict(Config())
    cfg["dtype"] = "fp32"
    cfg["data"].update(frames=9, size=32, channels=1)
    cfg["vae"].update(channels=[16, 32], patch=4, latent_channels=4, time_compression=2)
    cfg["dit"].update(objective=objective, i2v=i2v, dim=32, depth=2, heads=2, text_depth=1, text_len=8, sample_cfg=3.0)
    torch.manual_seed(0)
    tokenizer = Tokenizer.train([PROMPT, "digit 7 is moving left and right"])
    vae, model = sample.build_vae(cfg), sample.build_dit(cfg["dit"], tokenizer.vocab_size, 4)
    torch.save(dict(kind="dit", step=0, config=cfg, tokenizer=tokenizer.state_dict(), vocab_size=tokenizer.vocab_size,
                    latent_shape=[4, 5, 4, 4], ema=model.state_dict(), vae=vae.state_dict(), vae_config=cfg), path)
    return str(path)


def start(ckpt, queue_size):
    server, worker = serve.make_server(ckpt, "127.0.0.1", 0, queue_size, device="cpu")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, worker, f"http://127.0.0.1:{server.server_address[1]}"


def stop(server, worker):
    server.shutdown()
    worker.stop()
    server.server_close()


@pytest.fixture(scope="module")
def tiny():
    server, worker, url = start("data/pretrained/tiny.pt", queue_size=2)
    yield url
    stop(server, worker)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    server, worker, url = start(write_checkpoint(tmp_path_factory.mktemp("ckpt") / "pyramid.pt"), 2)
    yield url
    stop(server, worker)


def call(url, body=None, raw=None):
    """(status, headers, bytes) of a GET, or of a POST of `body` as JSON (or of the bytes `raw`)."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def submit(url, **fields):
    status, _, body = call(url + "/generate", {"prompt": PROMPT, "steps": 2, **fields})
    assert status == 200, body
    return json.loads(body)["id"]


def result(url, job, timeout=60):
    """The finished GIF of a job, polling /result as a client without SSE does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, headers, body = call(f"{url}/result/{job}")
        if status != 202:
            assert status == 200 and headers["Content-Type"] == "image/gif", body
            return Image.open(io.BytesIO(body))
        time.sleep(0.05)
    raise AssertionError(f"job {job} did not finish in {timeout} s")


def events(url, job):
    """The (event, data) pairs of a job's SSE stream, read to its end."""
    pairs, kind = [], None
    with urllib.request.urlopen(f"{url}/events/{job}", timeout=60) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        for line in stream:
            line = line.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                pairs.append((kind, json.loads(line[6:])))
    return pairs


def png(size, mode="L", color=0):
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_page_and_info_describe_the_checkpoint(tiny):
    status, headers, page = call(tiny + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"<script>" in page
    info = json.loads(call(tiny + "/info")[2])
    assert (info["trained_frames"], info["max_frames"], info["frame_step"], info["image"]) == (9, 9, 2, False)
    assert info["text_len"] == 16 and info["size"] == [64, 64] and info["channels"] == 1


@pytest.mark.parametrize("frames", [9, 5])
def test_a_generation_returns_a_gif_of_the_requested_frames(tiny, frames):
    gif = result(tiny, submit(tiny, frames=frames, seed=frames))
    assert gif.n_frames == frames and gif.size == (64, 64)


def test_the_preview_stream_shows_the_video_forming_before_done(tiny):
    blocker = submit(tiny, steps=20)  # the worker is busy with it while we connect: no preview can be missed
    job = submit(tiny, steps=3)
    stream = events(tiny, job)
    kinds = [kind for kind, _ in stream]
    assert kinds[-1] == "done" and kinds.count("done") == 1 and "preview" in kinds[:-1], kinds
    first = next(data for kind, data in stream if kind == "preview")
    assert first["step"] == 1 and first["steps"] == 3 and first["frames"] == 9
    assert Image.open(io.BytesIO(base64.b64decode(first["gif"]))).n_frames == 9
    done = stream[-1][1]
    assert done["frames"] == 9 and done["seconds"] > 0 and done["fps"] == pytest.approx(9 / done["seconds"], rel=0.02)
    assert Image.open(io.BytesIO(base64.b64decode(done["gif"]))).n_frames == 9
    assert result(tiny, blocker).n_frames == 9
    quiet = events(tiny, submit(tiny, preview=False))  # previews off: only the end
    assert [kind for kind, _ in quiet] == ["done"] and quiet[0][1]["preview_seconds"] == 0
    assert events(tiny, job)[-1][0] == "done"  # a late reader of a finished job gets its end at once


@pytest.mark.parametrize("body, says", [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="   "), "prompt is empty"),
    (dict(prompt=" and ".join([PROMPT] * 6)), "tokens, more than the 16"),
    (dict(prompt=7), "prompt must be a string"),
    (dict(prompt=PROMPT, steps=0), "steps must be an integer in [1, 200]"),
    (dict(prompt=PROMPT, steps=201), "steps must be an integer in [1, 200]"),
    (dict(prompt=PROMPT, steps="10"), "steps must be an integer"),
    (dict(prompt=PROMPT, steps=True), "steps must be an integer"),
    (dict(prompt=PROMPT, cfg=0.5), "cfg must be a number in [1.0, 20.0]"),
    (dict(prompt=PROMPT, cfg=21), "cfg must be a number"),
    (dict(prompt=PROMPT, seed=-1), "seed must be an integer"),
    (dict(prompt=PROMPT, frames=4), "must be 1 + 2k"),
    (dict(prompt=PROMPT, frames=11), "cannot take --frames 11"),
    (dict(prompt=PROMPT, frames=67), "frames must be an integer in [1, 65]"),
    (dict(prompt=PROMPT, image=png((64, 64))), "cannot take an --image"),
    (dict(prompt=PROMPT, colour="red"), "unknown field 'colour'"),
    (dict(prompt=PROMPT, preview="yes"), "preview must be true or false"),
    ([PROMPT], "must be a JSON object"),
    (b'{"prompt": "digit 3', "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[" * 100_000, "not JSON"),
])
def test_bad_input_is_a_400_with_a_one_line_json_error(tiny, body, says):
    status, headers, answer = call(tiny + "/generate", *((None, body) if isinstance(body, bytes) else (body,)))
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert answer.count(b"\n") == 1 and says in json.loads(answer)["error"], answer


def test_a_huge_body_is_refused_unread_and_the_server_goes_on(tiny):
    host, port = tiny.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.putrequest("POST", "/generate")
    connection.putheader("Content-Length", str(10 ** 9))  # claimed, never sent
    connection.endheaders()
    answer = connection.getresponse()
    assert answer.status == 413 and "at most" in json.loads(answer.read())["error"]
    connection.close()
    assert call(tiny + "/nowhere")[0] == 404 and call(tiny + "/result/nojob")[0] == 404
    assert call(tiny + "/info")[0] == 200


@pytest.mark.filterwarnings("ignore:prompt .* has words the tokenizer never saw")
def test_words_the_tokenizer_never_saw_are_allowed_and_named(tiny):
    status, _, body = call(tiny + "/generate", dict(prompt="digit 3 is dancing", steps=2))
    assert status == 200 and json.loads(body)["unseen"] == ["dancing"]
    assert result(tiny, json.loads(body)["id"]).n_frames == 9


def test_concurrent_requests_are_all_answered_accepted_or_503(tiny):
    blocker = submit(tiny, steps=30)  # keeps the worker busy, so the queue of 2 fills
    answers = [None] * 8

    def client(k):
        answers[k] = call(tiny + "/generate", dict(prompt=PROMPT, steps=2, seed=k))
    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(answer is not None for answer in answers), "a request was never answered"
    accepted = [json.loads(body)["id"] for status, _, body in answers if status == 200]
    refused = [json.loads(body)["error"] for status, _, body in answers if status == 503]
    assert len(accepted) + len(refused) == 8 and accepted and refused
    assert all("busy" in reason for reason in refused)
    for job in [blocker, *accepted]:
        assert result(tiny, job).n_frames == 9


def test_a_pyramid_checkpoint_takes_a_first_frame_and_refuses_bad_images(pyramid):
    info = json.loads(call(pyramid + "/info")[2])
    assert info["image"] and info["size"] == [32, 32] and info["max_frames"] == 65
    gif = result(pyramid, submit(pyramid, image="data:image/png;base64," + png((32, 32), color=200), frames=11))
    assert gif.n_frames == 11
    for image, says in [(base64.b64encode(b"not an image").decode(), "image: cannot read it as a png, jpg or gif"),
                        ("@@@", "not valid base64"),
                        (png((16, 24)), "image: it is 24x16; this checkpoint makes 32x32 frames"),
                        (png((32, 32), "RGB", (255, 0, 0)), "in colour"),
                        (7, "image must be a PNG or JPG")]:
        status, _, answer = call(pyramid + "/generate", dict(prompt=PROMPT, steps=2, image=image))
        assert status == 400 and says in json.loads(answer)["error"], answer


def test_stopping_cancels_the_running_job_and_fails_the_waiting_ones(tmp_path):
    server, worker, url = start(write_checkpoint(tmp_path / "pyramid.pt"), 2)
    running, waiting = submit(url, steps=200, frames=65), submit(url, steps=2)
    deadline = time.monotonic() + 30
    while call(f"{url}/result/{running}")[2] != b'{"state": "running"}\n' and time.monotonic() < deadline:
        time.sleep(0.01)
    began = time.monotonic()
    stop(server, worker)
    assert not worker.is_alive() and time.monotonic() - began < 10
    assert worker.jobs[running].error == worker.jobs[waiting].error == "the server is shutting down"


def test_a_longer_flow_video_previews_every_window_it_chains(tmp_path, monkeypatch):
    monkeypatch.setattr(serve, "PREVIEW_SHARE", 1.0)  # a preview at every step
    monkeypatch.setattr(serve, "PREVIEW_EVERY", 0.0)
    server, worker, url = start(write_checkpoint(tmp_path / "flow_i2v.pt", "flow", i2v=True), 2)
    try:
        stream = events(url, submit(url, frames=13, image=png((32, 32), color=90)))  # 2 windows of 5 latent frames
    finally:
        stop(server, worker)
    previews = [(data["step"], data["steps"], data["frames"]) for kind, data in stream if kind == "preview"]
    assert previews == [(1, 4, 9), (2, 4, 9), (3, 4, 13), (4, 4, 13)]  # the first window stays in the picture
    assert stream[-1][0] == "done" and Image.open(io.BytesIO(base64.b64decode(stream[-1][1]["gif"]))).n_frames == 13
