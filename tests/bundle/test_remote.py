"""Bundles by URL against real servers on 127.0.0.1: the real huggingface_hub client talking
to a Hub stand-in (hub_server.py, through HF_ENDPOINT), s3fs talking to moto's S3 server
(AWS_ENDPOINT_URL), fsspec's HTTP client talking to a static file server. No library is
mocked. The expected bytes and checksums come from the bundle files themselves (hashlib)."""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import rt_helpers
from hub_server import HubServer
from quasar.errors import BundleError, MissingDependencyError, RemoteBundleError

pytest.importorskip("onnx")
pytest.importorskip("huggingface_hub")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("QUASAR_HOME", str(tmp_path / "home"))
    for v in ("QUASAR_OFFLINE", "HF_HUB_OFFLINE", "HF_TOKEN", "QUASAR_DEFAULT_BUNDLE"):
        monkeypatch.delenv(v, raising=False)
    # huggingface_hub reads HF_HUB_OFFLINE once, when its constants module is first imported;
    # tests/conftest.py sets it for the whole suite, so an earlier test may have frozen it on.
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "home"


@pytest.fixture
def bundle(tmp_path):
    return rt_helpers.write_tiny_bundle(tmp_path / "b")


@pytest.fixture
def hub(monkeypatch):
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def _files(b: Path):
    """{relative posix path: bytes} of every file under ``b`` (nested folders too)."""
    return {p.relative_to(b).as_posix(): p.read_bytes() for p in sorted(b.rglob("*"))
            if p.is_file()}


def _nested(b: Path) -> Path:
    """The bundle with one more listed file in a sub-folder (as variants/ files are)."""
    (b / "variants").mkdir()
    (b / "variants" / "extra.bin").write_bytes(os.urandom(1000))
    m = json.loads((b / "bundle.json").read_text())
    m["files"]["variants/extra.bin"] = hashlib.sha256(
        (b / "variants" / "extra.bin").read_bytes()).hexdigest()
    (b / "bundle.json").write_text(json.dumps(m))
    return b


def _cache_files(home: Path):
    return sorted(p.relative_to(home).as_posix() for p in home.rglob("*") if p.is_file())


def _no_partial(home: Path):
    """Nothing half-written: no bundle directory without its source record, no temporaries."""
    for p in home.rglob("*"):
        assert not p.name.endswith((".tmp", ".incomplete", ".lock")), p
        if p.name == "bundle" and p.is_dir():
            assert (p.parent / "source.json").is_file(), p


def _fetch(spec, **kw):
    from quasar.bundle.remote import resolve_bundle

    return resolve_bundle(spec, **kw)


# ------------------------------------------------------------------------------ hf://


def test_hf_bundle_fetched_verified_scored_and_recorded(home, bundle, hub, tmp_path):
    from quasar import Scorer
    from quasar.bundle import load_bundle

    _nested(bundle)
    sha = hub.publish("org/tiny", {**_files(bundle), "README.md": b"# card\n"})
    s = Scorer.from_bundle("hf://org/tiny")
    d = s.bundle.path
    assert d.is_relative_to(home / "remote")
    assert _files(d) == _files(bundle)  # exactly the bundle: no README, no client metadata
    assert s.bundle.source["url"] == "hf://org/tiny" and s.bundle.source["revision"] == sha
    assert load_bundle(bundle).source is None  # a local bundle has no source
    pixels = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
    local = Scorer.from_bundle(bundle)
    np.testing.assert_array_equal(s.embed_pixels(pixels), local.embed_pixels(pixels))
    _no_partial(home)


def test_hf_offline_reuses_cache_without_network(home, bundle, hub, monkeypatch):
    hub.publish("org/tiny", _files(bundle))
    first = _fetch("hf://org/tiny@main")
    n = len(hub.requests)
    hub.stop()  # the network is gone
    for var in ("QUASAR_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
        assert _fetch("hf://org/tiny@main") == first
        monkeypatch.delenv(var)
    assert _fetch("hf://org/tiny@main", offline=True) == first
    assert len(hub.requests) == n
    with pytest.raises(RemoteBundleError) as ei:
        _fetch("hf://org/other", offline=True)
    assert str(home / "remote" / "hf") in str(ei.value) and "offline" in str(ei.value)
    # online but the server is down: the cached copy stands in (as huggingface_hub does)
    assert _fetch("hf://org/tiny@main") == first
    with pytest.raises(RemoteBundleError, match="reading the repository's revision failed"):
        _fetch("hf://org/never-fetched")


def test_hf_new_commit_and_pinned_revisions(home, bundle, hub):
    sha1 = hub.publish("org/tiny", _files(bundle))
    d1 = _fetch("hf://org/tiny")
    b2 = rt_helpers.write_tiny_bundle(bundle.parent / "b2", dim=rt_helpers.TINY_DIM,
                                      anchors={"text": rt_helpers.tiny_anchor_sets()["kadis"]})
    sha2 = hub.publish("org/tiny", _files(b2))
    hub.revisions["org/tiny"]["v1"] = sha1
    d2 = _fetch("hf://org/tiny")
    assert d2 != d1 and d2.parent.name == sha2 and d1.parent.name == sha1
    assert (d2 / "anchors.safetensors").read_bytes() == (b2 / "anchors.safetensors").read_bytes()
    assert _fetch(f"hf://org/tiny@{sha1}") == d1 == _fetch("hf://org/tiny@v1")


def test_hf_tampered_file_refused_nothing_cached(home, bundle, hub):
    files = _files(bundle)
    enc = bytearray(files["encoder.onnx"])
    enc[-3] ^= 0xFF
    files["encoder.onnx"] = bytes(enc)
    hub.publish("org/tiny", files)
    with pytest.raises(RemoteBundleError) as ei:
        _fetch("hf://org/tiny")
    msg = str(ei.value)
    assert "sha256 mismatch" in msg and "hf://org/tiny/encoder.onnx" in msg
    assert "nothing was cached" in msg
    assert not [p for p in _cache_files(home) if "/bundle/" in p]
    _no_partial(home)


@pytest.mark.parametrize("name", ["../../../evil.txt", "/tmp/evil.txt", "a/../../evil.txt",
                                  "a\\..\\..\\evil.txt", ".cache/huggingface/evil.txt"])
def test_hf_manifest_path_outside_bundle_refused_before_download(home, bundle, hub, tmp_path,
                                                                 name):
    files = _files(bundle)
    m = json.loads(files["bundle.json"])
    m["files"][name] = hashlib.sha256(b"x").hexdigest()
    files["bundle.json"] = json.dumps(m).encode()
    hub.publish("org/tiny", files)
    with pytest.raises(RemoteBundleError, match=r"evil\.txt.*outside the bundle"):
        _fetch("hf://org/tiny")
    assert not any("evil" in r or "encoder.onnx" in r for r in hub.requests)
    assert not list(tmp_path.rglob("evil.txt"))
    _no_partial(home)


def test_hf_oversized_or_broken_manifest_refused(home, bundle, hub):
    files = _files(bundle)
    m = json.loads(files["bundle.json"])
    m["provenance"]["padding"] = "x" * (1 << 21)
    hub.publish("org/big", {**files, "bundle.json": json.dumps(m).encode()})
    with pytest.raises(RemoteBundleError, match="larger than 1 MiB"):
        _fetch("hf://org/big")
    hub.publish("org/broken", {**files, "bundle.json": b"{not json"})
    with pytest.raises(RemoteBundleError, match="hf://org/broken/bundle.json: not valid JSON"):
        _fetch("hf://org/broken")
    assert not any("encoder.onnx" in r for r in hub.requests)
    _no_partial(home)


def test_hf_revision_disappears(home, bundle, hub):
    sha = hub.publish("org/tiny", _files(bundle), revision="v1")
    d = _fetch("hf://org/tiny@v1")
    del hub.revisions["org/tiny"]["v1"]
    with pytest.raises(RemoteBundleError) as ei:
        _fetch("hf://org/tiny@v1")
    assert "'v1' does not exist" in str(ei.value) and "QUASAR_OFFLINE=1" in str(ei.value)
    assert _fetch("hf://org/tiny@v1", offline=True) == d and d.parent.name == sha
    # gone between the revision lookup and the download: the commit's files 404
    sha2 = hub.publish("org/tiny", _files(bundle), revision="v2")
    files = hub.commits["org/tiny"][sha2]
    del files["encoder.onnx"]
    with pytest.raises(RemoteBundleError, match="encoder.onnx is listed.*missing"):
        _fetch("hf://org/tiny@v2")
    assert not (d.parent.parent / sha2).exists()
    _no_partial(home)


def test_hf_server_killed_mid_download_then_retry(home, tmp_path, monkeypatch):
    big = rt_helpers.write_tiny_bundle(tmp_path / "big", dim=4096)  # a ~MB encoder
    files = _files(big)
    hub = HubServer().start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    hub.publish("org/big", files)
    hub.cut = {"encoder.onnx": len(files["encoder.onnx"]) // 3}
    with pytest.raises(RemoteBundleError, match="downloading encoder.onnx failed.*nothing was "
                                                "cached"):
        _fetch("hf://org/big")
    assert not [p for p in _cache_files(home) if "/bundle/" in p]
    _no_partial(home)
    hub2 = HubServer()  # the server comes back (elsewhere): a retry completes
    hub2.commits, hub2.revisions = hub.commits, hub.revisions
    with hub2:
        monkeypatch.setenv("HF_ENDPOINT", hub2.url)
        d = _fetch("hf://org/big")
    assert (d / "encoder.onnx").read_bytes() == files["encoder.onnx"]
    _no_partial(home)


def test_hf_private_repo_needs_token(home, bundle, hub, monkeypatch):
    hub.publish("org/secret", _files(bundle))
    hub.private["org/secret"], hub.token = True, "hf_good"
    with pytest.raises(RemoteBundleError, match="HF_TOKEN"):
        _fetch("hf://org/secret")
    assert not (home / "remote").exists() or not [p for p in _cache_files(home) if "bundle/" in p]
    monkeypatch.setenv("HF_TOKEN", "hf_good")
    assert (_fetch("hf://org/secret") / "encoder.onnx").is_file()


def test_concurrent_fetches_download_once(home, bundle, hub):
    hub.publish("org/tiny", _files(bundle))
    hub.delay = {"encoder.onnx": 2.0}  # the others arrive while the first one downloads
    code = ("import sys; from quasar.bundle.remote import resolve_bundle; "
            "print(resolve_bundle('hf://org/tiny'))")
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert len({o[0].strip() for o in outs}) == 1
    gets = [r for r in hub.requests if r.startswith("GET") and r.endswith("/encoder.onnx")]
    assert len(gets) == 1, gets
    infos = [r for r in hub.requests if "/api/models/org/tiny/revision/" in r]
    assert len(infos) == 3  # every process resolved online...
    assert any("another process is fetching" in o[1] for o in outs)  # ...and one waited
    _no_partial(home)


def test_bad_urls_and_missing_client(home):
    from quasar.bundle.remote import parse_bundle_url

    for bad in ("hf://justarepo", "hf://org/repo@", "hf://org/repo/sub", "s3://"):
        with pytest.raises(RemoteBundleError, match="hf://ORG/REPO"):
            parse_bundle_url(bad)
    code = ("import sys; sys.modules['huggingface_hub'] = None\n"
            "from quasar.bundle.remote import resolve_bundle\n"
            "resolve_bundle('hf://org/x')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "MissingDependencyError" in r.stderr and 'quasar-iqa[hub]' in r.stderr
    assert issubclass(MissingDependencyError, ImportError)


def test_default_bundle_env_and_cli(home, bundle, hub, tmp_path, monkeypatch):
    """QUASAR_DEFAULT_BUNDLE=hf://... is the default bundle; `quasar score --bundle hf://`."""
    from quasar import Scorer

    sha = hub.publish("org/tiny", _files(bundle))
    monkeypatch.setenv("QUASAR_DEFAULT_BUNDLE", "hf://org/tiny")
    s = Scorer.from_bundle()
    assert s.bundle.source["revision"] == sha
    from PIL import Image

    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "s.csv"
    n = len(hub.requests)
    hub.stop()
    r = subprocess.run([sys.executable, "-m", "quasar", "score", str(tmp_path / "a.png"),
                        "--bundle", "hf://org/tiny", "--offline", "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.read_text().count("\n") >= 2 and len(hub.requests) == n
    ident = json.loads(Path(f"{out}.run.json").read_text())  # the run identity records it
    assert ident["bundle_url"] == "hf://org/tiny" and ident["bundle_revision"] == sha
    r = subprocess.run([sys.executable, "-m", "quasar", "score", str(tmp_path / "a.png"),
                        "--bundle", "hf://org/unknown", "--offline"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "not in the bundle cache" in r.stderr


# ------------------------------------------------------------------------------ s3://


@pytest.fixture
def s3(monkeypatch):
    with rt_helpers.moto_server() as endpoint, \
            rt_helpers.s3_bucket(monkeypatch, endpoint, "models") as client:
        yield client


def _upload(client, b: Path, prefix: str, files=None):
    for name, data in (files or _files(b)).items():
        client.put_object(Bucket="models", Key=f"{prefix}/{name}", Body=data)


def test_s3_bundle_fetch_change_tamper_offline(home, bundle, s3, monkeypatch):
    _upload(s3, _nested(bundle), "q/tiny")
    d = _fetch("s3://models/q/tiny/")
    assert _files(d) == _files(bundle)
    want = hashlib.sha256(_files(bundle)["bundle.json"]).hexdigest()
    from quasar.bundle import load_bundle

    assert load_bundle(d).source["revision"] == want[:32]
    assert _fetch("s3://models/q/tiny") == d  # same content: same copy
    files = _files(bundle)
    anc = bytearray(files["anchors.safetensors"])
    anc[-5] ^= 0x01
    s3.put_object(Bucket="models", Key="q/tiny/anchors.safetensors", Body=bytes(anc))
    # same bundle.json (the revision): the verified copy stays in use, unchanged
    assert _fetch("s3://models/q/tiny") == d
    assert load_bundle(d, verify=True).path == d
    from quasar.bundle.remote import clear_cache

    clear_cache("s3://models/q/tiny")
    with pytest.raises(RemoteBundleError, match="anchors.safetensors: sha256 mismatch"):
        _fetch("s3://models/q/tiny")
    monkeypatch.setenv("QUASAR_OFFLINE", "1")
    with pytest.raises(RemoteBundleError, match="not in the bundle cache"):
        _fetch("s3://models/q/tiny")


def test_s3_tampered_first_fetch_and_missing_credentials(home, bundle, s3, monkeypatch, tmp_path):
    files = _files(bundle)
    enc = bytearray(files["encoder.onnx"])
    enc[10] ^= 0xFF
    _upload(s3, bundle, "q/bad", {**files, "encoder.onnx": bytes(enc)})
    with pytest.raises(RemoteBundleError, match="encoder.onnx: sha256 mismatch.*nothing was"):
        _fetch("s3://models/q/bad")
    assert not [p for p in _cache_files(home) if "/bundle/" in p]
    with pytest.raises(RemoteBundleError, match="no bundle.json there"):
        _fetch("s3://models/q/none")
    for v in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(v)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(RemoteBundleError, match="no credentials.*AWS_ACCESS_KEY_ID"):
        _fetch("s3://models/q/bad")


# ------------------------------------------------------------------------------ http(s)://


def test_http_bundle(home, bundle, tmp_path):
    pytest.importorskip("aiohttp")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/b"
        d = _fetch(url)
        assert _files(d) == _files(bundle)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_bundle_replaced_during_download_is_fetched_again(home, bundle, tmp_path):
    """A push lands between bundle.json and the files: the first copy does not verify, the
    URL's bundle.json has changed, so the new bundle is fetched; a plain corruption (same
    bundle.json) is refused (test_s3_tampered...)."""
    pytest.importorskip("aiohttp")
    new = rt_helpers.write_tiny_bundle(tmp_path / "new", anchors={
        "text": rt_helpers.tiny_anchor_sets()["kadis"]})
    shutil.copytree(bundle, tmp_path / "site" / "b")
    served = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            served.append(self.path)
            if not (self.path.endswith("/bundle.json") and len(served) == 1):
                return super().do_GET()
            # The push lands while the old bundle.json is on its way: every later request
            # sees the new files (done before answering, so no thread can be served first).
            old = (tmp_path / "site" / "b" / "bundle.json").read_bytes()
            for p in new.iterdir():
                shutil.copy(p, tmp_path / "site" / "b" / p.name)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(old)))
            self.end_headers()
            self.wfile.write(old)

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path / "site")))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        d = _fetch(f"http://127.0.0.1:{httpd.server_address[1]}/b")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert _files(d) == _files(new)
    assert [p.parent.name for p in d.parent.parent.glob("*/bundle")] == [d.parent.name]
    _no_partial(home)


# ------------------------------------------------------------------------------ push


def test_push_to_hub_then_score_from_it(home, bundle, hub, tmp_path, capsys):
    from quasar.bundle.push import push

    with pytest.raises(BundleError, match="RANDOMLY"):
        push(str(rt_helpers.write_tiny_bundle(tmp_path / "r", random_init=True)),
             "hf://org/pushed")
    res = push(str(bundle), "hf://org/pushed")
    out = capsys.readouterr().out
    assert "quasar score photos/ --bundle hf://org/pushed" in out
    files = hub.files("org/pushed", "main")
    assert {k: v for k, v in files.items() if k in _files(bundle)} == _files(bundle)
    card = files["README.md"].decode()
    assert "tiny.test" in card and "quasar score photos/ --bundle hf://org/pushed" in card
    assert "| kadis |" not in card and "`kadis`" in card
    assert res["commit"] == hub.revisions["org/pushed"]["main"]
    d = _fetch("hf://org/pushed")
    assert d.parent.name == res["commit"]
    assert set(files) == set(_files(bundle)) | {"README.md", ".gitattributes"}
    hub.publish("org/pushed", {"old-variant.onnx": b"stale"}, base=res["commit"])
    res1 = push(str(bundle), "hf://org/pushed", quiet=True)  # a stale file is removed
    assert "old-variant.onnx" not in hub.files("org/pushed", res1["commit"])
    res2 = push(str(bundle), "hf://org/pushed", revision="exp", quiet=True)
    assert hub.revisions["org/pushed"]["exp"] == res2["commit"]
    res3 = push(str(bundle), "hf://org/pushed", create_pr=True, quiet=True)
    assert hub.private["org/pushed"] is False
    push(str(bundle), "hf://org/private", private=True, quiet=True)
    assert hub.private["org/private"] is True
    assert res3["pr_url"] and hub.prs[-1]["sha"] == res3["commit"]
    assert hub.revisions["org/pushed"]["main"] == res1["commit"]  # a PR leaves main alone


def test_push_refuses_unverified_and_pushes_to_s3(home, bundle, s3, tmp_path):
    from quasar.bundle.push import push

    bad = rt_helpers.write_tiny_bundle(tmp_path / "bad")
    with open(bad / "encoder.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="sha256 mismatch.*not pushed"):
        push(str(bad), "s3://models/p/bad")
    r = subprocess.run([sys.executable, "-m", "quasar", "push", str(bundle), "s3://models/p/t",
                        "--revision", "x"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--revision" in r.stderr
    push(str(bundle), "s3://models/p/t", quiet=True)
    with pytest.raises(RemoteBundleError, match="--overwrite"):
        push(str(bundle), "s3://models/p/t", quiet=True)
    d = _fetch("s3://models/p/t")
    assert _files(d) == _files(bundle)
    card = s3.get_object(Bucket="models", Key="p/t/README.md")["Body"].read().decode()
    assert "pip install \"quasar-iqa[cpu,s3]\"" in card


def test_model_card_content(bundle):
    from quasar.bundle import load_bundle
    from quasar.bundle.card import model_card, weights_licence

    card = model_card(load_bundle(bundle), "hf://org/x")
    m = json.loads((bundle / "bundle.json").read_text())
    for name, digest in m["files"].items():
        assert f"| {name} | `{digest}` |" in card
    for res in m["preprocess"]:
        assert f"| {res}" in card
    assert "## Precision variants" in card and "## Parity report" in card
    assert weights_licence("clip-rn50-nopos.openai") == "mit"
    assert weights_licence("dinov2-vits14.lvd142m") == "apache-2.0"
    assert weights_licence("tiny.test") is None and "license:" not in card
    rcard = model_card(load_bundle(rt_helpers.write_tiny_bundle(bundle.parent / "r",
                                                                random_init=True)), "s3://b/x")
    assert "NO quality" in rcard and "quasar-iqa[cpu,s3]" in rcard


# ------------------------------------------------------------------------------ gs://


def test_gs_bundle_fetch_and_push(home, bundle, monkeypatch):
    """gcsfs against gcp-storage-emulator (STORAGE_EMULATOR_HOST, gcsfs's own setting)."""
    from quasar.bundle.push import push

    with rt_helpers.gcs_emulator(monkeypatch, "models") as fs:
        for name, data in _files(_nested(bundle)).items():
            fs.pipe(f"models/q/tiny/{name}", data)
        d = _fetch("gs://models/q/tiny")
        assert _files(d) == _files(bundle) and "/remote/gs/" in d.as_posix()
        push(str(bundle), "gs://models/p/t", quiet=True)
        assert _files(_fetch("gs://models/p/t")) == _files(bundle)
        assert b"quasar-iqa[cpu,gcs]" in fs.cat("models/p/t/README.md")


def test_model_card_reports_parity_provenance_and_gated_variants(bundle):
    """Values written into bundle.json come back in the card, row by row."""
    from quasar.bundle import load_bundle
    from quasar.bundle.card import model_card

    m = json.loads((bundle / "bundle.json").read_text())
    m["provenance"].update({"source": "open_clip", "pretrained": "openai", "torch": "2.5.1"})
    m["parity"] = {"max_abs_diff": 3.2e-06, "min_cosine": 0.9999991, "shapes": [[1, 3, 224, 224]]}
    m["variants"] = {
        "fast-decode-224": {"precision": "fp32", "backend": "onnxruntime", "kind": "decode",
                            "passed": True, "gate": {"min_cosine": 0.995},
                            "report": {"srcc": 0.9987}},
        "int8-cpu": {"precision": "int8", "backend": "onnxruntime", "kind": "decode",
                     "passed": False, "gate": {"min_cosine": 0.995},
                     "report": {"min_cosine": 0.93}}}
    (bundle / "bundle.json").write_text(json.dumps(m))
    card = model_card(load_bundle(bundle), "hf://org/x")
    assert "| source | open_clip |" in card and "| torch | 2.5.1 |" in card
    assert "| max_abs_diff | 3.2e-06 |" in card and "| min_cosine | 0.9999991 |" in card
    rows = [line for line in card.splitlines() if line.startswith("| fast-decode-224 |")
            or line.startswith("| int8-cpu |")]
    assert len(rows) == 2
    assert "| yes |" in rows[0] and '{"srcc": 0.9987}' in rows[0]
    assert "NO (refused at run time)" in rows[1] and '{"min_cosine": 0.93}' in rows[1]
