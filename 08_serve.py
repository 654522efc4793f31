"""08_serve.py: a local studio, the model behind a web page (course topic 5.4, deployment and real-time generation).

sample.py loads a checkpoint, makes its videos and exits. A service keeps one model warm in memory and takes
requests from many clients, and three questions follow, each answered here with the standard library alone:

1. Who runs the model? ONE worker thread owns it and generates one video at a time: a generation already keeps
   the device busy, and two at once would only share it (batching requests together is the next step up, as in
   the continuous batching of LLM servers; here every request has its own length, steps and seed).
2. What when requests come faster than that? They wait in a bounded queue of --queue pending jobs (the
   running one apart); beyond it the answer is at once HTTP 503 with a Retry-After: load shedding, instead of a
   backlog that only grows and answers everyone late. Bad input is refused before it reaches the queue (HTTP
   400, one line of JSON).
3. How does the user see it work? Every sampler step estimates the clean latents x0_hat (03, 04, 05 pass them
   to preview=); decoded with the VAE, that is the video forming, coarse shapes first, then detail: the live
   preview of the diffusion UIs (which often decode with a tiny distilled decoder, TAESD, to make it cheap).
   It is streamed with Server-Sent Events (WHATWG HTML, "server-sent events"): one long HTTP response of
   `event:`/`data:` lines that the browser's EventSource reads; one-way and plain HTTP, unlike a WebSocket.

    python 08_serve.py --ckpt data/pretrained/tiny.pt [--host 127.0.0.1] [--port 8000] [--queue 4]

then open the printed URL. The API, JSON in and out, errors as {"error": "..."} on one line:
    GET  /               the page (data/studio.html, plain JavaScript, works offline)
    GET  /info           what the checkpoint takes: frames, image size, text length, defaults, limits
    POST /generate       {"prompt", "seed", "steps", "cfg", "frames", "image": PNG/JPG as base64 or a data: URL,
                          "preview": true (false: no preview events, and none of their cost)}
                         -> {"id", "ahead", "unseen": words} | 400 bad input | 413 body too big | 503 queue full
    GET  /events/<id>    SSE: `preview` events {step, steps, frames, gif} then one `done` {gif, seconds, fps,
                         frames, preview_seconds} or `error` {error}; gifs are base64
    GET  /result/<id>    the GIF (200), 202 {"state"} while queued or running, 404 once forgotten
Finished jobs are kept for KEEP_SECONDS, the last KEEP_JOBS of them. make_server() builds it all for tests.
"""
import argparse
import base64
import importlib
import io
import json
import math
import os
import queue
import signal
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import torch

from data.config import ArgumentParser, check_dtype, pick_device
from data.moving_mnist import save_gif
from data.video_folder import first_frame

sample = importlib.import_module("sample")  # load(), generate() and check_request() do the work
pyramid = importlib.import_module("05_pyramid")

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "studio.html")
MAX_BODY = 4 << 20        # bytes; a first frame is a few KB, so 4 MiB is plenty and a flood is refused unread
MAX_FRAMES = 65           # 1 + 64: 33 latent frames at time compression 2, a few seconds of compute on a CPU
MAX_STEPS, CFG_RANGE, DEFAULT_STEPS = 200, (1.0, 20.0), 50    # 50: sample.py's default (a distilled model: its own)
KEEP_JOBS, KEEP_SECONDS = 32, 600                             # finished jobs a late client can still fetch
PREVIEW_SHARE, PREVIEW_EVERY = 0.5, 0.1  # previews take at most half of a generation, at most 10 a second
FIELDS = ("prompt", "seed", "steps", "cfg", "frames", "image", "preview")


class Cancelled(Exception):
    """Raised inside a generation (from its preview callback) when the server stops."""


def gif_bytes(video):
    """A video (C, T, H, W) in [-1, 1] as the bytes of the GIF that sample.py would write (save_gif)."""
    buffer = io.BytesIO()
    buffer.name = "video.gif"  # PIL picks the format from the name, as it does for sample.py's files
    save_gif(buffer, video)
    return buffer.getvalue()


def number(request, name, default, low, high, integer=True):
    """request[name] (or the default), checked to be an integer (or any number) in [low, high]."""
    value = request.get(name, default)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:  # NaN fails too
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'} in [{low}, {high}], "
                         f"got {json.dumps(value)[:40]}")
    return value


class Job:
    """One request: its checked parameters, then what the worker publishes. SSE readers wait on `changed`."""

    def __init__(self, params):
        self.id, self.params, self.state = uuid.uuid4().hex[:16], params, "queued"
        self.changed = threading.Condition()
        self.seq, self.preview, self.final, self.finished, self.gif, self.error = 0, None, None, None, None, None

    def publish(self, kind, data):
        """A `preview` replaces the one before (a slow reader skips frames instead of falling behind); `done` or
        `error` ends the job and drops the last preview."""
        event = f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
        with self.changed:
            self.seq += 1
            if kind == "preview":
                self.preview = event
            else:
                self.preview, self.final, self.state, self.finished = None, event, kind, time.monotonic()
                self.error = data.get("error")
            self.changed.notify_all()


class Worker(threading.Thread):
    """The one thread that owns the model: takes jobs from a bounded queue and runs them one at a time. Request
    threads only check input (parse) and enqueue (submit); nothing else of theirs touches the model."""

    def __init__(self, ckpt, queue_size, device="auto", dtype=None):
        super().__init__(name="studio-worker", daemon=True)
        self.device = pick_device(device)
        self.model, self.objective, self.vae, self.tokenizer, config, self.latent_shape = sample.load(ckpt, self.device)
        d = config["dit"]
        self.dtype, self.text_len, self.rescale = dtype or config["dtype"], d["text_len"], d["sample_cfg_rescale"]
        check_dtype(self.device, self.dtype)
        self.pending = queue.Queue(maxsize=queue_size)  # the running job is not in it
        self.jobs, self.lock = OrderedDict(), threading.Lock()  # id -> Job, oldest first
        self.stopping, self.busy = threading.Event(), False
        tc, T = self.vae.time_compression, self.latent_shape[1]
        self.trained = 1 + tc * (T - 1)
        longer = isinstance(self.objective, pyramid.PyramidFlow) or bool(getattr(self.model, "image_channels", 0))
        self.info = dict(
            checkpoint=os.path.basename(ckpt), objective=d["objective"], arch=d["arch"], text_len=self.text_len,
            trained_frames=self.trained, frame_step=tc, image=longer,
            max_frames=1 + tc * ((MAX_FRAMES - 1) // tc) if longer else self.trained,
            size=[n * self.vae.space_compression for n in self.latent_shape[2:]], channels=self.vae.in_channels,
            steps=config["distill"]["sample_steps"] if config["distill"]["teacher"] else DEFAULT_STEPS,
            max_steps=MAX_STEPS, cfg=min(max(d["sample_cfg"], CFG_RANGE[0]), CFG_RANGE[1]), cfg_range=CFG_RANGE,
            guidance_distilled=self.model.g_embed is not None, queue=queue_size)

    # ------------------------------------------------------------------------- request threads
    def parse(self, body):
        """The checked parameters of a /generate body, or a ValueError in the user's words (an HTTP 400)."""
        try:
            request = json.loads(body)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError; "[[[[..." too deep
            raise ValueError(f"the body is not JSON: {e}") from None
        if not isinstance(request, dict):
            raise ValueError('the body must be a JSON object, e.g. {"prompt": "digit 3 is moving up and down"}')
        unknown = sorted(set(request) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown field {unknown[0][:40]!r}; the fields are {', '.join(FIELDS)}")
        prompt = request.get("prompt")
        if not isinstance(prompt, str):
            raise ValueError('prompt must be a string, e.g. "digit 3 is moving up and down"')
        prompt = " ".join(prompt.split())
        if not prompt:
            raise ValueError('prompt is empty: give the caption to generate, e.g. "digit 3 is moving up and down"')
        self.tokenizer.encode([prompt], self.text_len)  # longer than the text encoder takes: a ValueError
        unseen = [word for word in prompt.split() if word not in self.tokenizer.words]  # allowed, but meaningless
        image, previews = request.get("image"), request.get("preview", True)
        if image is not None and not isinstance(image, str):
            raise ValueError("image must be a PNG or JPG as a base64 string or a data: URL")
        if not isinstance(previews, bool):
            raise ValueError(f"preview must be true or false, got {json.dumps(previews)[:40]}")
        frames = number(request, "frames", self.trained, 1, MAX_FRAMES)
        sample.check_request(self.model, self.objective, self.vae, self.latent_shape, frames, image is not None)
        if image is not None:
            try:
                data = base64.b64decode(image.split(",", 1)[-1] if image.startswith("data:") else image, validate=True)
            except ValueError:  # binascii.Error
                raise ValueError("image is not valid base64") from None
            try:
                image = first_frame(data, self.vae.in_channels, *self.info["size"])
            except ValueError as e:
                raise ValueError(f"image: {e}") from None
        return dict(prompt=prompt, seed=number(request, "seed", 0, 0, 2 ** 32 - 1),
                    steps=number(request, "steps", self.info["steps"], 1, MAX_STEPS),
                    cfg=float(number(request, "cfg", self.info["cfg"], *CFG_RANGE, integer=False)),
                    frames=frames, image=image, unseen=unseen, preview=previews)

    def submit(self, params):
        """(job, jobs ahead of it), or None when the queue is full or the server is stopping."""
        job = Job(params)
        with self.lock:
            if self.stopping.is_set():
                return None
            finished = [j for j in self.jobs.values() if j.finished is not None]  # oldest first
            for k, old in enumerate(finished):  # forget all but the last KEEP_JOBS, and the expired
                if len(finished) - k > KEEP_JOBS or time.monotonic() - old.finished > KEEP_SECONDS:
                    del self.jobs[old.id]
            try:
                self.pending.put_nowait(job)
            except queue.Full:
                return None
            self.jobs[job.id] = job
            return job, max(self.pending.qsize() - 1 + self.busy, 0)  # the worker may have taken it already

    # ------------------------------------------------------------------------- the worker thread
    def run(self):
        while True:
            job = self.pending.get()
            if job is None:  # stop() woke us
                return
            self.busy, job.state = True, "running"
            try:
                self.generate(job)
            except Cancelled:
                job.publish("error", {"error": "the server is shutting down"})
            except Exception as e:  # a bug or the device (out of memory): this job fails, the studio goes on
                traceback.print_exc()
                job.publish("error", {"error": f"generation failed: {type(e).__name__}: {e}"})
            finally:
                self.busy = False

    def generate(self, job):
        p, vae, T = job.params, self.vae, self.latent_shape[1]
        # A flow or ddpm video longer than trained is made in windows of T latent frames, each after the first
        # overlapping the one before by a frame (sample.sample_latents), and preview() restarts at i = 0 for each.
        # The last estimate of each window (at its last step: its output) is kept, so the preview shows the whole
        # video so far. A pyramid makes one pass over all its frames: its i counts every step of every frame.
        length = 1 + (p["frames"] - 1) // vae.time_compression
        chained = not isinstance(self.objective, pyramid.PyramidFlow) and length > T
        windows = 1 + math.ceil((length - T) / max(T - 1, 1)) if chained else 1
        state = dict(before=[], last=None, next_at=0.0, spent=0.0)

        def preview(i, n, x0_hat):
            if self.stopping.is_set():
                raise Cancelled
            if i == 0 and state["last"] is not None:  # a new window: the one before is finished
                state["before"].append(state["last"] if not state["before"] else state["last"][:, :, 1:])
                state["last"] = None
            if i == n - 1:
                state["last"] = x0_hat
            start = time.perf_counter()
            if not p["preview"] or start < state["next_at"]:
                return
            # The cost: a VAE decode of the whole video so far, and a GIF. For tiny.pt's 9 frames that is ~80 ms on
            # one CPU thread, as much as 8 sampler steps (~10 ms each, with guidance): a preview every step would
            # make a generation ~9x slower. So after each preview the sampler runs on until previews are at most
            # PREVIEW_SHARE of the time (~8 steps here: 50 steps take ~1 s instead of 0.6 s, with ~6 previews),
            # and at most one every PREVIEW_EVERY seconds where decoding is cheap (a GPU). Step 0 always shows.
            z = torch.cat(state["before"] + [x0_hat[:, :, 1:] if state["before"] else x0_hat], dim=2)
            video = vae.decode(z.float() / vae.scaling_factor, chunk=T if z.shape[2] > T else None)
            video = video[0, :, :p["frames"]]  # the last window may run past the frames asked for
            step, steps = len(state["before"]) * n + i + 1, windows * n
            job.publish("preview", dict(step=step, steps=steps, frames=video.shape[1],
                                        gif=base64.b64encode(gif_bytes(video)).decode()))
            spent = time.perf_counter() - start
            state["spent"] += spent
            state["next_at"] = time.perf_counter() + max(PREVIEW_EVERY, spent * (1 - PREVIEW_SHARE) / PREVIEW_SHARE)

        start = time.perf_counter()
        videos = sample.generate(self.model, self.objective, vae, self.tokenizer, [p["prompt"]], self.latent_shape,
                                 self.text_len, p["steps"], p["cfg"], p["seed"], self.device, self.dtype,
                                 self.rescale, images=p["image"], frames=p["frames"], preview=preview)
        seconds = time.perf_counter() - start
        job.gif = gif_bytes(videos[0])
        job.publish("done", dict(gif=base64.b64encode(job.gif).decode(), seconds=round(seconds, 3),
                                 fps=round(p["frames"] / seconds, 2), frames=p["frames"],
                                 preview_seconds=round(state["spent"], 3)))

    def stop(self, timeout=30):
        """Refuse new jobs, fail the waiting ones, cancel the running one at its next step, end the thread."""
        with self.lock:
            self.stopping.set()
        while True:
            try:
                job = self.pending.get_nowait()
            except queue.Empty:
                break
            job.publish("error", {"error": "the server is shutting down"})
        self.pending.put(None)  # the queue is empty and nothing can be added: never blocks
        self.join(timeout)


class Handler(BaseHTTPRequestHandler):
    """One thread per connection (ThreadingHTTPServer). Every route is caught: a client can break its own
    request, never the server."""
    server_version = "t2v-studio/1.0"
    timeout = 30  # seconds a socket read or write may stall: a client that sends half a body cannot hold a thread

    def do_GET(self):
        self.respond(self.get)

    def do_POST(self):
        self.respond(self.post)

    def respond(self, route):
        try:
            route(urlsplit(self.path).path)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client left or stalled: nobody to answer
        except Exception as e:
            traceback.print_exc()
            try:
                self.send_json(500, {"error": f"internal error: {type(e).__name__}: {e}"})
            except OSError:
                pass

    def send_json(self, code, data, headers=()):
        body = json.dumps(data).encode() + b"\n"
        self.send_bytes(code, "application/json", body, headers)

    def send_bytes(self, code, kind, body, headers=()):
        self.send_response(code)
        for name, value in [("Content-Type", kind), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store"), *headers]:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def get(self, path):
        worker = self.server.worker
        if path in ("/", "/index.html"):
            return self.send_bytes(200, "text/html; charset=utf-8", self.server.page)
        if path == "/info":
            return self.send_json(200, worker.info)
        kind, _, job_id = path.strip("/").partition("/")
        job = worker.jobs.get(job_id) if kind in ("events", "result") else None
        if job is None:
            what = f"no job {job_id[:40]!r} (finished jobs are kept {KEEP_SECONDS} s, the last {KEEP_JOBS})"
            return self.send_json(404, {"error": what if kind in ("events", "result") else f"no page {path[:60]!r}"})
        if kind == "events":
            return self.events(job)
        if job.gif is not None:
            return self.send_bytes(200, "image/gif", job.gif)
        if job.error is not None:  # failed, or cancelled by a shutdown
            return self.send_json(500, {"error": job.error})
        self.send_json(202, {"state": job.state}, [("Retry-After", "1")])

    def events(self, job):
        """The SSE stream of one job: the newest preview whenever there is a new one, then `done` or `error`.
        A comment line every 15 s while nothing happens (queued) shows whether the client is still there."""
        self.send_response(200)
        for name, value in [("Content-Type", "text/event-stream"), ("Cache-Control", "no-store")]:
            self.send_header(name, value)
        self.end_headers()
        seen = 0
        while True:
            with job.changed:
                job.changed.wait_for(lambda: job.seq > seen, timeout=15)
                seq, preview, final = job.seq, job.preview, job.final
            if final is not None:
                self.wfile.write(final)
                return
            self.wfile.write(preview if seq > seen and preview is not None else b": waiting\n\n")
            self.wfile.flush()
            seen = seq

    def post(self, path):
        if path != "/generate":
            return self.send_json(404, {"error": f"POST {path[:60]!r}: the only POST is /generate"})
        size = self.headers.get("Content-Length", "")
        if not size.isdigit():  # missing, negative or not a number
            self.close_connection = True
            return self.send_json(400, {"error": "the request needs a Content-Length header and a JSON body"})
        if int(size) > MAX_BODY:
            self.close_connection = True  # the body is left unread
            return self.send_json(413, {"error": f"the body is {size[:20]} bytes; at most {MAX_BODY} are read"})
        try:
            params = self.server.worker.parse(self.rfile.read(int(size)))
        except ValueError as e:
            return self.send_json(400, {"error": " ".join(str(e).split())})  # one line
        submitted = self.server.worker.submit(params)
        if submitted is None:
            why = ("the server is shutting down" if self.server.worker.stopping.is_set() else
                   f"busy: {self.server.worker.pending.maxsize} jobs are already waiting; try again shortly")
            return self.send_json(503, {"error": why}, [("Retry-After", "5")])
        job, ahead = submitted
        self.send_json(200, {"id": job.id, "ahead": ahead, "unseen": job.params["unseen"]})


def make_server(ckpt, host="127.0.0.1", port=8000, queue_size=4, device="auto", dtype=None):
    """(server, worker): the model loaded, the worker thread started, the server bound to host:port (0: a free
    port, server.server_address says which). Serve with server.serve_forever() (in a thread, for tests); stop
    with server.shutdown() (from another thread), worker.stop(), server.server_close()."""
    if queue_size < 1:
        raise ValueError(f"the queue must hold at least 1 pending job, got {queue_size}")
    with open(PAGE, "rb") as f:
        page = f.read()
    try:  # bound first: a taken port fails before the model loads
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as e:  # the port is taken, or the address is not this machine's
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    try:
        worker = Worker(ckpt, queue_size, device, dtype)
    except BaseException:
        server.server_close()
        raise
    server.worker, server.page = worker, page  # daemon handler threads: an open SSE stream never blocks exit
    worker.start()
    return server, worker


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a dit.pt written by train.py, or data/pretrained/tiny.pt")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on; 0.0.0.0 opens it to your network")
    p.add_argument("--port", type=int, default=8000, help="0: any free port")
    p.add_argument("--queue", type=int, default=4, help="pending jobs that may wait; beyond, HTTP 503")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None, help="default: the checkpoint's")
    args = p.parse_args(argv)
    if not os.path.isfile(args.ckpt):
        p.error(f"no checkpoint at {args.ckpt}")
    try:
        server, worker = make_server(args.ckpt, args.host, args.port, args.queue, args.device, args.dtype)
    except (OSError, OverflowError, ValueError) as e:  # the port is taken or out of range, --queue 0, no page
        raise SystemExit(f"error: {e}") from None
    host, port = server.server_address[:2]
    print(f"studio: {worker.info['checkpoint']} ({worker.info['objective']}) on {worker.device}, "
          f"queue {args.queue}; open http://{host}:{port}/  (Ctrl-C stops)", flush=True)
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)  # `kill` and service managers stop it as Ctrl-C does
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopping: the running job is cancelled at its next step", flush=True)
    finally:
        worker.stop()
        server.server_close()


if __name__ == "__main__":
    main()
