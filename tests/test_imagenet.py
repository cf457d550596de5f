"""Fetching torchvision's ImageNet weights (caco_jax.interop.imagenet) from a local HTTP server.

The server (127.0.0.1, a free port, in a thread) serves a made-up file named with the
first hex digits of its own SHA-256, as torchvision's files are; it can cut the first
response short, ignore ``Range`` or send other bytes. Nothing here reaches the internet.
"""

from __future__ import annotations

import hashlib
import http.server
import pathlib
import random
import re
import socket
import threading
import types
from collections.abc import Iterator

import numpy as np
import pytest

from caco_jax.errors import CacoError, DownloadError, UsageError
from caco_jax.interop import imagenet

BODY = random.Random(0).randbytes(300_000)  # several download chunks
NAME = f"mobilenet_v3_small-{hashlib.sha256(BODY).hexdigest()[:8]}.pth"


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /models/<name>: the server's ``served`` bytes, honouring ``Range: bytes=N-`` unless told not to."""

    server: _Server

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append({"path": self.path, "range": self.headers.get("Range")})
        if self.path != f"/models/{srv.name}":
            self.send_error(404)
            return
        body, start = srv.served, self._range_start()
        if start is not None and start >= len(body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200 if start is None else 206)
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        payload = body[start or 0 :]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        first = len(srv.requests) == 1
        if (srv.cut_first or srv.stall_first) and first:
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            if srv.stall_first:
                srv.release.wait(10)  # silent until the test is over: the client must time out
            return  # HTTP/1.0: the connection closes, short of Content-Length
        self.wfile.write(payload)

    def _range_start(self) -> int | None:
        found = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        return int(found.group(1)) if found and self.server.honour_range else None

    def log_message(self, *args) -> None:
        pass


class _Server(http.server.HTTPServer):
    def __init__(
        self,
        served: bytes,
        *,
        name: str = NAME,
        cut_first: bool = False,
        stall_first: bool = False,
        honour_range: bool = True,
    ):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.served, self.name, self.honour_range = served, name, honour_range
        self.cut_first, self.stall_first, self.release = cut_first, stall_first, threading.Event()
        self.requests: list[dict[str, str | None]] = []

    def start(self) -> _Server:
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/models"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """No proxies for 127.0.0.1, no inherited cache or mirror settings, and the made-up file as 'small'."""
    for var in (
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        imagenet.URL_ENV,
        imagenet.CACHE_ENV,
        "XDG_CACHE_HOME",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """serve(served_bytes, **options) -> a running _Server; 'small' names the made-up file."""
    monkeypatch.setitem(imagenet.FILES, "small", NAME)
    servers = []

    def start(served: bytes = BODY, **options) -> _Server:
        servers.append(_Server(served, **options).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def _fetch(server: _Server, cache: pathlib.Path) -> pathlib.Path:
    return imagenet.fetch("small", cache_dir=cache, base_url=server.base_url, progress=False, timeout=10)


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/models"  # nothing listens there now: connection refused


# --------------------------------------------------------------------------- names and places
def test_torchvision_names_and_url_follow_the_published_files():
    assert imagenet.FILES == {"small": "mobilenet_v3_small-047dcff4.pth", "large": "mobilenet_v3_large-8738ca79.pth"}
    assert imagenet.hash_prefix("mobilenet_v3_large-8738ca79.pth") == "8738ca79"
    assert imagenet.weights_url("small") == "https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth"
    assert imagenet.file_name("mobilenet_v3_large") == "mobilenet_v3_large-8738ca79.pth"


def test_the_base_url_comes_from_the_argument_then_the_environment(monkeypatch):
    monkeypatch.setenv(imagenet.URL_ENV, "http://mirror.example/tv/")
    assert imagenet.weights_url("large") == "http://mirror.example/tv/mobilenet_v3_large-8738ca79.pth"
    assert imagenet.weights_url("large", "http://other/x") == "http://other/x/mobilenet_v3_large-8738ca79.pth"


def test_cache_dir_is_caco_jax_cache_then_xdg_then_home(monkeypatch, tmp_path):
    assert imagenet.default_cache_dir() == tmp_path / "home" / ".cache" / "caco_jax" / "weights"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert imagenet.default_cache_dir() == tmp_path / "xdg" / "caco_jax" / "weights"
    monkeypatch.setenv(imagenet.CACHE_ENV, str(tmp_path / "mine"))
    assert imagenet.default_cache_dir() == tmp_path / "mine" / "weights"


def test_an_arch_without_imagenet_weights_is_a_usage_error():
    with pytest.raises(UsageError, match="'tiny'.*large, small"):
        imagenet.fetch("tiny", cache_dir="/nonexistent", base_url="http://127.0.0.1:9")


# --------------------------------------------------------------------------- downloads
def test_a_good_download_is_kept_and_then_served_from_the_cache(serve, tmp_path):
    server, cache = serve(), tmp_path / "cache"
    path = _fetch(server, cache)
    assert path == cache / NAME and path.read_bytes() == BODY
    assert server.requests == [{"path": f"/models/{NAME}", "range": None}]
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [NAME]  # no .part left

    assert _fetch(server, cache) == path
    assert len(server.requests) == 1  # the second call made no request


def test_the_default_cache_and_the_url_variable_are_used(serve, monkeypatch, tmp_path, capsys):
    server = serve()
    monkeypatch.setenv(imagenet.CACHE_ENV, str(tmp_path / "c"))
    monkeypatch.setenv(imagenet.URL_ENV, server.base_url)
    assert imagenet.fetch("small") == tmp_path / "c" / "weights" / NAME
    assert len(server.requests) == 1
    assert NAME in capsys.readouterr().err  # the progress bar


def test_a_damaged_cached_copy_is_downloaded_again(serve, tmp_path):
    server, cache = serve(), tmp_path / "cache"
    cache.mkdir()
    (cache / NAME).write_bytes(BODY[:-1] + bytes([BODY[-1] ^ 1]))
    assert _fetch(server, cache).read_bytes() == BODY
    assert len(server.requests) == 1


def test_a_corrupted_download_is_deleted_and_the_error_names_both_hashes_and_the_url(serve, tmp_path):
    corrupted = BODY[:1000] + b"\0" + BODY[1001:]
    server, cache = serve(corrupted), tmp_path / "cache"
    with pytest.raises(DownloadError) as err:
        _fetch(server, cache)
    message = str(err.value)
    assert NAME[-12:-4] in message and hashlib.sha256(corrupted).hexdigest()[:8] in message
    assert f"{server.base_url}/{NAME}" in message
    assert not [p for p in cache.iterdir() if p.suffix in (".pth", ".part")]


def test_an_interrupted_download_is_kept_and_resumed_with_a_range_request(serve, tmp_path):
    server, cache = serve(cut_first=True), tmp_path / "cache"
    with pytest.raises(DownloadError, match="resumes the partial download"):
        _fetch(server, cache)
    part = cache / f"{NAME}.part"
    assert part.read_bytes() == BODY[: len(BODY) // 2] and not (cache / NAME).exists()

    assert _fetch(server, cache).read_bytes() == BODY
    assert server.requests[1]["range"] == f"bytes={len(BODY) // 2}-"
    assert not part.exists()


def test_a_stalled_download_times_out_and_keeps_what_arrived(serve, tmp_path):
    server, cache = serve(stall_first=True), tmp_path / "cache"
    with pytest.raises(DownloadError, match="timed out.*resumes the partial download"):
        imagenet.fetch("small", cache_dir=cache, base_url=server.base_url, progress=False, timeout=0.5)
    assert (cache / f"{NAME}.part").read_bytes() == BODY[: len(BODY) // 2]


def test_a_server_that_ignores_range_makes_the_download_start_over(serve, tmp_path):
    server, cache = serve(honour_range=False), tmp_path / "cache"
    cache.mkdir()
    (cache / f"{NAME}.part").write_bytes(b"x" * 1000)  # would spoil the file if appended to
    assert _fetch(server, cache).read_bytes() == BODY
    assert server.requests == [{"path": f"/models/{NAME}", "range": "bytes=1000-"}]


def test_a_partial_file_longer_than_the_real_one_is_discarded(serve, tmp_path):
    server, cache = serve(), tmp_path / "cache"
    cache.mkdir()
    (cache / f"{NAME}.part").write_bytes(BODY + b"junk")
    assert _fetch(server, cache).read_bytes() == BODY
    assert [r["range"] for r in server.requests] == [f"bytes={len(BODY) + 4}-", None]  # 416, then from the start


def test_a_complete_partial_file_is_checked_and_moved_into_place(serve, tmp_path):
    server, cache = serve(), tmp_path / "cache"
    cache.mkdir()
    (cache / f"{NAME}.part").write_bytes(BODY)  # e.g. the process died before the rename
    assert _fetch(server, cache).read_bytes() == BODY
    assert [r["range"] for r in server.requests] == [f"bytes={len(BODY)}-"]


def test_offline_the_error_says_which_url_to_fetch_and_how_to_pass_the_file(serve, tmp_path):
    cache, base = tmp_path / "cache", _closed_port_url()
    cache.mkdir()
    (cache / f"{NAME}.part").write_bytes(BODY[:5000])
    with pytest.raises(DownloadError) as err:
        imagenet.fetch("small", cache_dir=cache, base_url=base, progress=False, timeout=5)
    message = str(err.value)
    assert f"{base}/{NAME}" in message
    assert f"--config.model.pretrained=/path/to/{NAME}" in message and str(cache / NAME) in message
    assert "5000 bytes kept" in message and "resumes" in message
    assert (cache / f"{NAME}.part").stat().st_size == 5000  # kept for the resume
    assert isinstance(err.value, CacoError) and err.value.exit_code == 1


def test_an_http_error_names_the_status_and_the_url(serve, tmp_path):
    server = serve(name="something-else.pth")
    with pytest.raises(DownloadError, match=rf"could not download {re.escape(server.base_url)}/{NAME} \(HTTP 404"):
        _fetch(server, tmp_path / "cache")


# --------------------------------------------------------------------------- wiring
def test_load_pretrained_imagenet_fetches_the_models_arch(monkeypatch, tmp_path):
    from caco_jax.runs.loading import load_pretrained

    not_a_pth = tmp_path / "fetched.pth"
    not_a_pth.write_text("not a checkpoint")
    calls = []
    monkeypatch.setattr(imagenet, "fetch", lambda arch: calls.append(arch) or not_a_pth)
    with pytest.raises(ValueError, match=re.escape(str(not_a_pth))):  # the fetched file is what gets read
        load_pretrained(types.SimpleNamespace(arch="large"), "imagenet")
    assert calls == ["large"]


def test_a_local_path_is_not_fetched(monkeypatch, tmp_path):
    from caco_jax.errors import WeightsError
    from caco_jax.runs.loading import load_pretrained

    monkeypatch.setattr(imagenet, "fetch", lambda arch: pytest.fail("a path must not be fetched"))
    with pytest.raises(WeightsError, match="not found"):
        load_pretrained(types.SimpleNamespace(arch="small"), tmp_path / "imagenet")


def test_convert_pth_imagenet_offline_says_what_to_do(monkeypatch, tmp_path, capsys):
    from caco_jax.cli import convert

    base = _closed_port_url()
    monkeypatch.setenv(imagenet.URL_ENV, base)
    monkeypatch.setenv(imagenet.CACHE_ENV, str(tmp_path / "cache"))
    rc = convert.main(["--pth", "imagenet", "--arch", "large", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and not (tmp_path / "out").exists()
    assert err.startswith(f"error: could not download {base}/mobilenet_v3_large-8738ca79.pth")
    assert "--pth /path/to/mobilenet_v3_large-8738ca79.pth" in err


@pytest.mark.slow
@pytest.mark.torch
def test_load_pretrained_imagenet_end_to_end(monkeypatch, tmp_path):
    """A torchvision-layout file of a small model, served and fetched, loads into another small model."""
    pytest.importorskip("torch")
    from caco_jax.interop.convert import export_state_dict
    from caco_jax.interop.torch_io import save_state_dict
    from caco_jax.models import create_model
    from caco_jax.runs.loading import load_pretrained
    from caco_jax.runs.weights import model_weights

    source = create_model(arch="small", attention="se", num_classes=1000, seed=0)
    save_state_dict(export_state_dict(source), tmp_path / "made_up.pth")
    body = (tmp_path / "made_up.pth").read_bytes()
    name = f"mobilenet_v3_small-{hashlib.sha256(body).hexdigest()[:10]}.pth"
    monkeypatch.setitem(imagenet.FILES, "small", name)
    server = _Server(body, name=name).start()
    try:
        monkeypatch.setenv(imagenet.URL_ENV, server.base_url)
        monkeypatch.setenv(imagenet.CACHE_ENV, str(tmp_path / "cache"))
        target = create_model(arch="small", attention="se", num_classes=1000, seed=1)
        summary = load_pretrained(target, "imagenet")
    finally:
        server.stop()
    assert str(tmp_path / "cache" / "weights" / name) in summary
    want, got = model_weights(source), model_weights(target)
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
