"""Hardening (issue 19): planted links, damaged models and caches, dead services, plugins.

Each test fails on the code before its fix; each goes through the CLI or the public API with
real files, real loopback servers and real signals or resource limits.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_sdss import fake_sdss_fixture  # noqa: F401  (the loopback SDSS server fixture)
from test_classify import CASJOBS, env, make_checkpoint, read_csv  # noqa: F401  (fixture)

from galmerge.cli import cli


def _run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _umask_mode() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


# -- item 2: one atomic-write helper; a planted link at a guessable temporary name -------------

def _victim(tmp: Path) -> Path:
    victim = tmp / "victim.txt"
    victim.write_text("precious\n")
    return victim


def test_classify_never_follows_a_link_at_the_old_temporary_name(env):  # noqa: F811
    tmp, ckpt, _ = env
    victim = _victim(tmp)
    host, pid = socket.gethostname(), os.getpid()
    out = tmp / "out.csv"
    # the names the output writers used to use: predictable from host and process id
    for name in (f".out.csv~{host}~{pid}~.tmp", f".out.fits~{host}~{pid}~.tmp",
                 f".out.fits.h5~{host}~{pid}~.tmp"):
        (tmp / name).symlink_to(victim)
    (tmp / "dr16.csv").write_text(CASJOBS)
    for target in (out, tmp / "out.fits"):
        res = _run("classify", str(tmp / "dr16.csv"), "--model", str(ckpt), "--survey",
                   "stamps", "--cache", str(tmp / "c.h5"), "--output", str(target), "--quiet")
        assert res.exit_code == 0, res.output
    assert victim.read_text() == "precious\n"
    header, rows = read_csv(out)
    assert header[-1] == "status" and len(rows) == 11
    assert stat.S_IMODE(out.stat().st_mode) == _umask_mode()


def test_checkpoint_summary_and_tables_never_follow_links(tmp_path):
    from galmerge.config.rundir import write_json
    from galmerge.evaluation.comparison import write_table

    victim = _victim(tmp_path)
    for name in (".best.pt.tmp", ".summary.json.tmp", ".t.csv.tmp"):
        (tmp_path / name).symlink_to(victim)
    ckpt = make_checkpoint(tmp_path / "best.pt")
    write_json(tmp_path / "summary.json", {"a": 1})
    write_table([{"strategy": "none", "x": 1.0}], tmp_path / "t.csv")
    assert victim.read_text() == "precious\n"
    assert json.loads((tmp_path / "summary.json").read_text()) == {"a": 1}
    # one permission policy for every file galmerge writes: the umask's, checkpoints included
    for path in (ckpt, tmp_path / "summary.json", tmp_path / "t.csv"):
        assert stat.S_IMODE(path.stat().st_mode) == _umask_mode(), path
    # nothing left behind but the planted links
    assert sorted(p.name for p in tmp_path.glob(".*")) == [
        ".best.pt.tmp", ".summary.json.tmp", ".t.csv.tmp"]


def test_fetch_refuses_a_link_planted_at_its_lock_or_part_file(tmp_path, monkeypatch):
    from loopback_http import LoopbackServer
    from test_fetch import RECORD, _zenodo_blobs

    victim = _victim(tmp_path)
    folder = tmp_path / "deepmerge"
    folder.mkdir()
    name = "SimReal_TARGET_X_postmergers_SDSS.npy"
    with LoopbackServer() as srv:
        srv.add_zenodo_record(RECORD, _zenodo_blobs())
        monkeypatch.setenv("GALMERGE_ZENODO_URL", srv.url)
        for planted in (f".{name}.lock", f"{name}.part"):
            (folder / planted).symlink_to(victim)
            res = _run("fetch", "sdss", "--data-dir", str(tmp_path), "--no-progress")
            assert res.exit_code != 0
            assert "symbolic link" in res.output and "Traceback" not in res.output, res.output
            assert victim.read_text() == "precious\n"
            (folder / planted).unlink()
        res = _run("fetch", "sdss", "--data-dir", str(tmp_path), "--no-progress")
        assert res.exit_code == 0, res.output


# -- item 3: checkpoints carry a SHA-256 of their content, checked on load --------------------

def _flip_weight_byte(ckpt: Path) -> None:
    import torch

    weight = torch.load(ckpt, weights_only=True)["model"]["head.0.weight"]
    blob = bytearray(ckpt.read_bytes())
    at = blob.find(weight.numpy().tobytes()[:64])
    assert at > 0
    blob[at + 10] ^= 0x40
    ckpt.write_bytes(bytes(blob))


def test_a_flipped_byte_in_best_pt_is_refused_by_classify_and_evaluate(env):  # noqa: F811
    tmp, ckpt, _ = env
    (tmp / "dr16.csv").write_text(CASJOBS)
    _flip_weight_byte(ckpt)
    res = _run("classify", str(tmp / "dr16.csv"), "--model", str(ckpt.parent), "--survey",
               "stamps", "--cache", str(tmp / "c.h5"), "--quiet")
    assert res.exit_code != 0
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "damaged" in lines[0] and str(ckpt) in lines[0], res.output
    assert not (tmp / "dr16_galmerge.csv").exists()


def test_checkpoints_without_a_hash_still_load(tmp_path):
    import torch

    from galmerge.models.model import load_model

    ckpt = make_checkpoint(tmp_path / "best.pt")
    payload = torch.load(ckpt, weights_only=True)
    assert len(payload.pop("sha256")) == 64
    torch.save(payload, tmp_path / "old.pt")  # as written before checkpoints had a hash
    assert load_model(tmp_path / "old.pt").temperature == 1.5


def test_summary_records_the_hash_of_best_pt(tmp_path):
    import torch
    from eval_helpers import tiny_run, write_pair

    source, target = write_pair(tmp_path / "data", n=24)
    summary = tiny_run(tmp_path / "run", source, target, epochs=1)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert summary["best_sha256"] == best["sha256"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["best_sha256"] == \
        best["sha256"]


# -- item 4: the cutout cache binds each stamp to its key and refuses non-finite stamps -------

def _classify_twice_with_cache_edit(env, edit) -> tuple[str, str, int]:  # noqa: F811
    tmp, ckpt, log = env
    (tmp / "dr16.csv").write_text(CASJOBS)
    args = ["classify", str(tmp / "dr16.csv"), "--model", str(ckpt), "--survey", "stamps",
            "--quiet", "--cache", str(tmp / "c.h5"), "--output", str(tmp / "o.csv")]
    assert _run(*args).exit_code == 0
    good = (tmp / "o.csv").read_text()
    fetched = len(log.read_text().splitlines())
    import h5py

    with h5py.File(tmp / "c.h5", "r+") as f:
        edit(f)
    res = _run(*args)
    assert res.exit_code == 0, res.output
    assert (tmp / "o.csv").read_text() == good  # the stamps were fetched again
    return res.output, good, len(log.read_text().splitlines()) - fetched


def test_swapped_cache_index_rows_are_detected_and_refetched(env):  # noqa: F811
    def swap(f):
        kh = f["key_hash"][()]
        kh[[0, 1]] = kh[[1, 0]]  # two galaxies would get each other's stamps
        f["key_hash"][...] = kh

    output, _, refetched = _classify_twice_with_cache_edit(env, swap)
    assert "is corrupt" in output and "does not match its key" in output, output
    assert refetched == 4  # three stamps again, and the server error retried


def test_nan_stamp_in_a_checksum_valid_cache_is_refused(env):  # noqa: F811
    import numpy as np

    def poison(f):
        img = f["images"][0]
        img[0, 3, 3] = np.nan
        f["images"][0] = img  # h5py writes a valid Fletcher-32 checksum for it
        if "stamp_check" in f:  # and a valid key binding: only the NaN is wrong
            from galmerge.classification.cutout_cache import stamp_checks

            kh = f["key_hash"][()]
            f["stamp_check"][0] = stamp_checks(kh[:1, 0], kh[:1, 1], img[None])[0]

    output, _, refetched = _classify_twice_with_cache_edit(env, poison)
    assert "is corrupt" in output and "non-finite" in output, output
    assert refetched == 4  # three stamps again, and the server error retried


# -- item 12: 'ok' means a probability in [0, 1] -----------------------------------------------

def _edited_checkpoint(ckpt: Path, edit) -> Path:
    import torch

    from galmerge.models.model import save_checkpoint

    payload = torch.load(ckpt, weights_only=True)
    edit(payload)
    save_checkpoint(ckpt, payload)
    return ckpt


def _classify_one_line_error(tmp: Path, ckpt: Path, needle: str) -> None:
    (tmp / "dr16.csv").write_text(CASJOBS)
    res = _run("classify", str(tmp / "dr16.csv"), "--model", str(ckpt), "--survey", "stamps",
               "--cache", str(tmp / "c.h5"), "--output", str(tmp / "o.csv"), "--quiet")
    lines = res.output.strip().splitlines()
    assert res.exit_code != 0 and len(lines) == 1 and needle in lines[0], res.output
    assert str(ckpt) in lines[0] and not (tmp / "o.csv").exists()


def test_nan_weights_or_a_bad_temperature_are_refused(env):  # noqa: F811
    import torch

    tmp, ckpt, _ = env

    def nan_weights(payload):
        payload["model"]["head.0.weight"][0, 0] = float("nan")

    _classify_one_line_error(tmp, _edited_checkpoint(ckpt, nan_weights), "non-finite")
    for temperature in (0.0, -1.0, float("nan"), "abc"):
        make_checkpoint(ckpt)

        def set_t(payload, t=temperature):
            payload["temperature"] = t

        _classify_one_line_error(tmp, _edited_checkpoint(ckpt, set_t), "temperature")
    assert torch.load(ckpt, weights_only=True)["temperature"] == "abc"


def test_a_model_whose_output_overflows_gives_no_ok_rows(env):  # noqa: F811
    tmp, ckpt, _ = env

    def huge(payload):  # finite weights whose logits overflow to inf - inf = NaN
        for name, t in payload["model"].items():
            if name.startswith("head.") and t.is_floating_point():
                t.mul_(1e30)

    _edited_checkpoint(ckpt, huge)
    (tmp / "dr16.csv").write_text(CASJOBS)
    res = _run("classify", str(tmp / "dr16.csv"), "--model", str(ckpt), "--survey", "stamps",
               "--cache", str(tmp / "c.h5"), "--output", str(tmp / "o.csv"), "--quiet")
    assert res.exit_code == 0, res.output
    _, rows = read_csv(tmp / "o.csv")
    for row in rows:
        if row[-1] == "ok":
            assert 0.0 <= float(row[-3]) <= 1.0
        else:
            assert row[-3] == ""
    assert "model-failed: non-finite output" in [r[-1] for r in rows]


# -- item 13: a plugin that misbehaves in any way is skipped with one warning ------------------

def _plugin_site(tmp: Path, source: str) -> Path:
    from test_plugins import _fake_distribution

    return _fake_distribution(tmp / "site", "galmerge-evil", "evil", "galmerge_evil", source)


def test_plugin_exiting_or_interrupting_at_import_is_skipped(tmp_path):
    from test_plugins import _run_cli

    for i, source in enumerate(("import sys\nsys.exit(3)\n", "raise KeyboardInterrupt\n",
                                "raise BaseException('odd')\n")):
        site = _plugin_site(tmp_path / str(i), source)
        for args in (["--help"], ["list", "surveys", "--json"]):
            proc = _run_cli(*args, extra_path=site, GALMERGE_LOAD_PLUGINS="evil")
            assert proc.returncode == 0, (source, proc.stdout, proc.stderr)
            warning = [line for line in proc.stderr.splitlines() if "evil" in line]
            assert len(warning) == 1 and "GALMERGE_DISABLE_PLUGINS=evil" in warning[0], \
                proc.stderr
            assert "Traceback" not in proc.stderr and "Aborted" not in proc.stderr
        assert "sdss" in proc.stdout


def _hook_plugin(kind: str, behaviour: str):
    from galmerge import hookimpl

    def body(*_args, **_kwargs):
        if behaviour == "raise":
            raise RuntimeError("hook broken on purpose")
        if behaviour == "exit":
            raise SystemExit(4)
        return 42

    name = f"register_{kind}"
    if kind == "commands":
        def hook(self, cli):
            return body()
    else:
        def hook(self):
            return body()
    hook.__name__ = name
    return type("Evil", (), {name: hookimpl(hook)})()


def test_plugin_hooks_that_raise_or_return_garbage_are_skipped():
    from galmerge.plugin.manager import get_plugin_manager, reset_plugin_manager

    for kind in ("strategies", "surveys", "backbones", "commands"):
        for behaviour in ("raise", "exit", "42"):
            if kind == "commands" and behaviour == "42":
                continue  # register_commands' return value is not used
            reset_plugin_manager()
            get_plugin_manager().register(_hook_plugin(kind, behaviour), "evil-hook")
            from galmerge.cli import cli as fresh_cli  # a group that has not added commands

            fresh_cli._plugin_commands_loaded = False
            err = ""
            for args in (["--help"], ["list", "strategies"], ["list", "surveys"],
                         ["list", "backbones"], ["plugins"]):
                res = CliRunner().invoke(fresh_cli, args)
                assert res.exit_code == 0, (kind, behaviour, args, res.output)
                assert "Traceback" not in res.output
                err += res.stderr
            warnings = [line for line in err.splitlines() if "evil-hook" in line]
            assert len(warnings) == 1, (kind, behaviour, err)
            assert "GALMERGE_DISABLE_PLUGINS=evil-hook" in warnings[0]
            assert f"register_{kind}" in warnings[0]
    reset_plugin_manager()


# -- items 5, 6: a dead survey service fails fast; a dripping body is cut off -----------------

def _jpeg_checkpoint(path: Path, size: int = 24) -> Path:
    import torch

    from galmerge.models.model import build_model, save_checkpoint

    torch.manual_seed(3)
    spec = {"survey": "sdss", "bands": ["g", "r", "i"], "channels": 3, "image_size": size,
            "pixel_scale_arcsec": 0.396, "image_source": "jpeg", "stretch": "none",
            "stretch_scale": 1.0, "mean": [0.0] * 3, "std": [255.0] * 3}
    save_checkpoint(path, {
        "galmerge_version": "test", "backbone": "deepmerge", "backbone_options": {},
        "in_channels": 3, "image_size": size, "num_classes": 2,
        "model": build_model("deepmerge", 3, size).state_dict(), "temperature": 1.0,
        "preprocess": {"source": spec, "target": spec}, "config": {}, "epoch": 1,
        "training_state": None,
    })
    return path


def _near_galaxies(fake, n: int) -> str:
    g = fake.galaxies[0]
    rows = [f"{i},{g.ra + 1e-4 * (i % 7)},{g.dec + 1e-4 * (i // 7)}" for i in range(n)]
    return "objID,ra,dec\n" + "\n".join(rows) + "\n"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_survey_service_fails_fast_and_exits_nonzero(tmp_path, monkeypatch):
    import time

    monkeypatch.chdir(tmp_path)
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("GALMERGE_SDSS_SKYSERVER_URL", url)
    monkeypatch.setenv("GALMERGE_SDSS_SAS_URL", url + "/sas")
    ckpt = _jpeg_checkpoint(tmp_path / "best.pt")
    (tmp_path / "c.csv").write_text(
        "objID,ra,dec\n" + "".join(f"{i},{150 + i * 0.01},2.0\n" for i in range(60)))
    t0 = time.monotonic()
    res = _run("classify", str(tmp_path / "c.csv"), "--model", str(ckpt), "--quiet",
               "--survey", "sdss?check_footprint=false&backoff=0.01&max_connection_failures=3",
               "--workers", "2", "--cache", str(tmp_path / "c.h5"), "--output",
               str(tmp_path / "o.csv"))
    assert time.monotonic() - t0 < 30  # not 5 tries x backoff for each of 60 rows
    lines = res.output.strip().splitlines()
    assert res.exit_code != 0 and len(lines) == 1, res.output
    assert f"127.0.0.1:{url.rsplit(':', 1)[1]}" in lines[0] and "run the same command" in lines[0]
    _, rows = read_csv(tmp_path / "o.csv")
    assert len(rows) == 60 and all(r[-1].startswith("fetch-failed") for r in rows)
    assert sum(r[-1] == "fetch-failed: service unreachable" for r in rows) >= 50


def test_a_service_dying_mid_run_keeps_what_is_done_and_the_same_command_resumes(
        tmp_path, monkeypatch):
    import threading

    from fake_sdss import FakeSdss

    monkeypatch.chdir(tmp_path)
    ckpt = _jpeg_checkpoint(tmp_path / "best.pt")
    first = FakeSdss().start()
    (tmp_path / "c.csv").write_text(_near_galaxies(first, 40))
    monkeypatch.setenv("GALMERGE_SDSS_SKYSERVER_URL", first.url)
    take = first._take_fault
    stopping = threading.Event()

    def die_after_ten(target):  # the service goes away after answering 10 stamps
        if "getjpeg" in target and first.count("getjpeg") >= 10 and not stopping.is_set():
            stopping.set()
            threading.Thread(target=first.stop).start()
        return take(target)

    first._take_fault = die_after_ten
    args = ["classify", str(tmp_path / "c.csv"), "--model", str(ckpt), "--quiet", "--survey",
            "sdss?check_footprint=false&backoff=0.01&max_connection_failures=4",
            "--workers", "1", "--cache", str(tmp_path / "c.h5"), "--output",
            str(tmp_path / "o.csv")]
    try:
        res = _run(*args)
    finally:
        first.stop()
    assert res.exit_code != 0 and "stopped answering" in res.output, res.output
    _, rows = read_csv(tmp_path / "o.csv")
    done = sum(r[-1] == "ok" for r in rows)
    assert 5 <= done <= 12 and "fetch-failed: service unreachable" in {r[-1] for r in rows}
    with FakeSdss() as second:  # the service is back (elsewhere): the same command resumes
        monkeypatch.setenv("GALMERGE_SDSS_SKYSERVER_URL", second.url)
        res = _run(*args)
        assert res.exit_code == 0, res.output
        assert second.count("getjpeg") == 40 - done  # what was done is not fetched again
    _, rows = read_csv(tmp_path / "o.csv")
    assert [r[-1] for r in rows] == ["ok"] * 40


def test_a_service_failing_every_request_stops_fetching_and_the_same_command_resumes(
        tmp_path, monkeypatch):
    # the service answers, but every stamp is a 503: no connection failure for the breaker to
    # count, so each of the rows used to cost all its tries; the failure budget stops it
    from fake_sdss import FakeSdss, Fault

    monkeypatch.chdir(tmp_path)
    ckpt = _jpeg_checkpoint(tmp_path / "best.pt")
    with FakeSdss() as fake:
        (tmp_path / "c.csv").write_text(_near_galaxies(fake, 30))
        monkeypatch.setenv("GALMERGE_SDSS_SKYSERVER_URL", fake.url)
        take = fake._take_fault
        broken = [True]

        def fail_after_five(target):  # 5 stamps come, then every stamp is an HTTP 503
            if "getjpeg" in target and fake.count("getjpeg") > 5 and broken[0]:
                return Fault("getjpeg", "503")
            return take(target)

        fake._take_fault = fail_after_five
        args = ["classify", str(tmp_path / "c.csv"), "--model", str(ckpt), "--quiet",
                "--survey", "sdss?check_footprint=false&workers=1&attempts=2&backoff=0.01"
                "&max_failed_requests=3", "--cache", str(tmp_path / "c.h5"), "--output",
                str(tmp_path / "o.csv")]
        res = _run(*args)
        lines = res.output.strip().splitlines()
        assert res.exit_code != 0 and len(lines) == 1, res.output
        assert "fetching stopped" in lines[0] and f"{fake.url[7:]}: 3 requests in a row" in lines[0]
        assert "HTTP 503" in lines[0] and "run the same command" in lines[0]
        assert "max_failed_requests" in lines[0]
        assert fake.count("getjpeg") == 5 + 3 * 2  # 3 failed stamps of 2 tries, not 25
        _, rows = read_csv(tmp_path / "o.csv")
        statuses = [r[-1] for r in rows]
        assert statuses.count("ok") == 5 and statuses.count("fetch-failed: HTTP 503") == 3
        assert statuses.count("fetch-failed: service failing") == 22
        broken[0] = False  # the service works again: the same command fetches the rest only
        res = _run(*args)
        assert res.exit_code == 0, res.output
        assert fake.count("getjpeg") == 11 + 25
    assert [r[-1] for r in read_csv(tmp_path / "o.csv")[1]] == ["ok"] * 30


def test_a_redirect_to_another_host_stops_classify_in_one_line_and_is_not_followed(
        tmp_path, monkeypatch):
    # another server that would answer every stamp: following the redirect would classify
    # its pictures as SDSS ones
    from fake_sdss import FakeSdss

    monkeypatch.chdir(tmp_path)
    ckpt = _jpeg_checkpoint(tmp_path / "best.pt")
    with FakeSdss() as fake, FakeSdss() as elsewhere:
        (tmp_path / "c.csv").write_text(_near_galaxies(fake, 6))
        monkeypatch.setenv("GALMERGE_SDSS_SKYSERVER_URL", fake.url)
        fake.add_fault("getjpeg", "redirect", times=-1, location=elsewhere.url)
        args = ["classify", str(tmp_path / "c.csv"), "--model", str(ckpt), "--quiet",
                "--survey", "sdss?check_footprint=false&workers=1", "--cache",
                str(tmp_path / "c.h5"), "--output", str(tmp_path / "o.csv")]
        res = _run(*args)
        lines = res.output.strip().splitlines()
        assert res.exit_code != 0 and len(lines) == 1, res.output
        assert f"redirected to {elsewhere.url}/dr17/SkyServerWS/ImgCutout/getjpeg?..." in lines[0]
        assert "another host" in lines[0] and "GALMERGE_SDSS_SKYSERVER_URL" in lines[0]
        assert elsewhere.count() == 0 and fake.count("getjpeg") <= 2  # the one in flight too
        # pointing the service at the host it redirects to, as the line says, works
        monkeypatch.setenv("GALMERGE_SDSS_SKYSERVER_URL", elsewhere.url)
        res = _run(*args)
        assert res.exit_code == 0, res.output
    assert [r[-1] for r in read_csv(tmp_path / "o.csv")[1]] == ["ok"] * 6


def test_a_dripping_body_is_cut_off_at_the_transfer_deadline():
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from galmerge.io.http import FetchError, RetryingClient, RetryPolicy

    stop = threading.Event()

    class Drip(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            while not stop.is_set():  # one byte every 50 ms: a read timeout never fires
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.05)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = RetryingClient(RetryPolicy.from_options({"attempts": 1, "timeout": 5,
                                                      "deadline": 1.5}))
    t0 = time.monotonic()
    try:
        with pytest.raises(FetchError, match="timeout"):
            client.get(f"http://127.0.0.1:{server.server_address[1]}/x")
        assert time.monotonic() - t0 < 5
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        client.close()


# -- item 8: two classify runs on one output: the second is refused in one line ----------------

@pytest.mark.slow
def test_a_second_classify_on_the_same_output_is_refused(env):  # noqa: F811
    import subprocess
    import sys
    import time

    from test_classify import _catalog, _script, _sub_env, fetch_lines

    tmp, ckpt, log = env
    _catalog(tmp / "cat.csv", 40)
    cmd = [sys.executable, str(_script(tmp)), "classify", str(tmp / "cat.csv"), "--model",
           str(ckpt), "--survey", "stamps", "--quiet", "--cache", str(tmp / "c.h5"),
           "--output", str(tmp / "out.csv"), "--chunk-rows", "8"]
    gate = tmp / "let-the-first-run-go"
    # the first run stops after 3 fetches until the gate file exists, so it holds the output
    # however slowly the second process starts on a loaded machine
    first = subprocess.Popen(cmd, env={**_sub_env(log), "GALMERGE_TEST_FETCH_GATE": str(gate)})
    try:
        deadline = time.monotonic() + 120
        while len(fetch_lines(log)) < 3:  # the first run is fetching
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        second = subprocess.run(cmd, env=_sub_env(log), capture_output=True, text=True,
                                timeout=120)
        assert first.poll() is None  # it still held the output while the second one ran
        gate.touch()
        assert second.returncode != 0
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "another galmerge classify is writing" in lines[0], \
            second.stderr
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            first.kill()
    _, rows = read_csv(tmp / "out.csv")
    assert len(rows) == 40 and all(r[-1] == "ok" for r in rows)


# -- item 16: user text in rich output is shown as it is, never read as markup ----------------

def test_paths_and_names_with_brackets_are_printed_verbatim(env):  # noqa: F811
    tmp, ckpt, _ = env
    (tmp / "dr16.csv").write_text(CASJOBS)
    for name in ("o[/x].csv", "x[red]y.csv"):
        res = _run("classify", str(tmp / "dr16.csv"), "--model", str(ckpt), "--survey",
                   "stamps", "--cache", str(tmp / "c.h5"), "--output", str(tmp / name))
        assert res.exit_code == 0, res.output
        assert name in "".join(res.output.split()), res.output  # rich may wrap long lines
        assert (tmp / name).exists()


def test_compare_shows_names_with_brackets_verbatim(tmp_path):
    from test_compare import _fake_summary

    _fake_summary(tmp_path / "a", "none", "[red]deep[/red]", 0, 0.6)
    _fake_summary(tmp_path / "b", "mmd[/x]", "[red]deep[/red]", 0, 0.7)
    res = _run("compare", str(tmp_path))
    assert res.exit_code == 0, res.output
    assert "[red]deep[/red]" in res.output and "mmd[/x]" in res.output


# -- items 14, 15: cached answers keyed by what decides them; survey specs and ranks checked ---

def test_a_tiny_lookup_radius_does_not_poison_later_default_runs(fake_sdss, tmp_path,
                                                                 monkeypatch):
    from test_classify import _sdss_checkpoint

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GALMERGE_DATA", str(tmp_path / "data"))
    ckpt = _sdss_checkpoint(tmp_path / "best.pt")
    g = fake_sdss.galaxies
    (tmp_path / "c.csv").write_text(
        "objID,ra,dec\n" + "".join(f"{i},{x.ra + 2e-4},{x.dec}\n" for i, x in enumerate(g)))
    statuses = []
    for spec in ("sdss?radius_arcmin=0.001", "sdss"):  # the default cache location both times
        res = _run("classify", str(tmp_path / "c.csv"), "--model", str(ckpt), "--quiet",
                   "--survey", spec, "--output", str(tmp_path / "o.csv"))
        assert res.exit_code == 0, res.output
        statuses.append({r[-1] for r in read_csv(tmp_path / "o.csv")[1]})
    assert statuses == [{"no-coverage"}, {"ok"}]


def test_unknown_survey_options_and_bad_values_are_refused_up_front(tmp_path, monkeypatch):
    from test_classify import _sdss_checkpoint

    monkeypatch.chdir(tmp_path)
    ckpt = _sdss_checkpoint(tmp_path / "best.pt")
    (tmp_path / "c.csv").write_text("objID,ra,dec\n1,150.0,2.0\n")
    for spec, needle in (("sdss?bogus=1", "bogus"), ("sdss?timeout=0", "timeout"),
                         ("sdss?timeout=-1", "timeout"), ("sdss?attempts=0", "attempts"),
                         ("sdss?max_connection_failures=-2", "max_connection_failures")):
        res = _run("classify", str(tmp_path / "c.csv"), "--model", str(ckpt), "--quiet",
                   "--survey", spec, "--output", str(tmp_path / "o.csv"))
        lines = res.output.strip().splitlines()
        assert res.exit_code != 0 and len(lines) == 1 and needle in lines[0], (spec, res.output)
        assert not (tmp_path / "o.csv").exists()


def test_bad_torchrun_variables_are_one_line(env, monkeypatch):  # noqa: F811
    tmp, ckpt, _ = env
    (tmp / "dr16.csv").write_text(CASJOBS)
    for variables, needle in (({"WORLD_SIZE": "2", "RANK": "abc"}, "RANK"),
                              ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK=5"),
                              ({"WORLD_SIZE": "x"}, "WORLD_SIZE")):
        for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            monkeypatch.delenv(name, raising=False)
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        res = _run("classify", str(tmp / "dr16.csv"), "--model", str(ckpt), "--survey",
                   "stamps", "--quiet", "--output", str(tmp / "o.csv"))
        lines = res.output.strip().splitlines()
        assert res.exit_code != 0 and len(lines) == 1 and needle in lines[0], res.output
        assert not (tmp / "o.csv").exists()


# -- items 9, 18: a run killed before its first checkpoint is no dead end; non-UTF-8 names ----

@pytest.mark.slow
def test_train_killed_before_its_first_checkpoint_can_start_again(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from eval_helpers import write_pair

    source, target = write_pair(tmp_path / "data", n=24)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "galmerge", "train", "--source", source, "--target", target,
           "--run-dir", str(run), "--epochs", "1", "--batch-size", "8", "--device", "cpu",
           "--quiet", "--patience", "0"]
    sub_env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=sub_env)
    deadline = time.monotonic() + 120
    while not (run / "config.toml").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if (run / "last.pt").exists() or (run / "best.pt").exists():
        pytest.skip("the run reached its first checkpoint before the kill")
    resumed = subprocess.run([sys.executable, "-m", "galmerge", "train", "--resume", str(run),
                              "--quiet"], env=sub_env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode != 0
    lines = resumed.stderr.strip().splitlines()
    assert len(lines) == 1 and "start it afresh" in lines[0], resumed.stderr
    again = subprocess.run(cmd, env=sub_env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert (run / "best.pt").is_file() and (run / "summary.json").is_file()


def test_a_run_directory_holding_a_real_run_is_still_refused(tmp_path):
    from galmerge.config.rundir import prepare_new
    from galmerge.errors import GalmergeError

    (tmp_path / "config.toml").write_text("seed = 0\n")
    (tmp_path / "notes.txt").write_text("mine\n")
    with pytest.raises(GalmergeError, match="not empty"):
        prepare_new(tmp_path)
    assert (tmp_path / "notes.txt").exists() and (tmp_path / "config.toml").exists()


def test_a_non_utf8_run_directory_is_refused_before_anything_is_written(tmp_path):
    from eval_helpers import write_pair

    source, target = write_pair(tmp_path / "data", n=24)
    run = str(tmp_path / "run") + "\udcff"  # the byte 0xff, as Python decodes it from argv
    res = _run("train", "--source", source, "--target", target, "--run-dir", run,
               "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--quiet")
    lines = res.output.strip().splitlines()
    assert res.exit_code != 0 and len(lines) == 1 and "UTF-8" in lines[0], res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# -- item 10: a file-size limit while caching is one line, and the next run recovers ----------

def test_file_size_limit_while_caching_is_one_line_and_the_next_run_recovers(env):  # noqa: F811
    import resource
    import subprocess
    import sys

    from test_classify import _catalog, _script, _sub_env

    tmp, ckpt, log = env
    _catalog(tmp / "cat.csv", 300)
    cmd = [sys.executable, str(_script(tmp)), "classify", str(tmp / "cat.csv"), "--model",
           str(ckpt), "--survey", "stamps", "--quiet", "--cache", str(tmp / "c.h5"),
           "--output", str(tmp / "out.csv"), "--chunk-rows", "64"]

    def limit() -> None:  # a real RLIMIT_FSIZE: writes past 200 kB fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    capped = subprocess.run(cmd, env=_sub_env(log), capture_output=True, text=True,
                            preexec_fn=limit, timeout=300)
    assert capped.returncode == 1, capped.stderr[-2000:]  # not a crash (SIGSEGV was -11)
    lines = capped.stderr.strip().splitlines()
    assert len(lines) == 1 and "c.h5.journal" in lines[0] and "File too large" in lines[0], \
        capped.stderr[-2000:]
    again = subprocess.run(cmd, env=_sub_env(log), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    _, rows = read_csv(tmp / "out.csv")
    assert len(rows) == 300 and all(r[-1] == "ok" for r in rows)


# -- item 17 and "user mistakes": compaction leftovers; checkpoints of another backbone -------

def test_a_compaction_killed_half_way_leaves_no_lasting_copy(env):  # noqa: F811
    import subprocess

    tmp, ckpt, _ = env
    (tmp / "dr16.csv").write_text(CASJOBS)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process id that no longer runs, as after a SIGKILL
    leftover = tmp / f".c.h5~{socket.gethostname()}~{dead.pid}~k3x9.tmp"
    leftover.write_bytes(b"\0" * 1_000_000)
    live = tmp / f".c.h5~{socket.gethostname()}~{os.getpid()}~live.tmp"  # someone's at work
    live.write_bytes(b"\0")
    res = _run("classify", str(tmp / "dr16.csv"), "--model", str(ckpt), "--survey", "stamps",
               "--cache", str(tmp / "c.h5"), "--quiet")
    assert res.exit_code == 0, res.output
    assert not leftover.exists() and live.exists()


def test_a_checkpoint_of_another_backbone_is_one_line(env, tmp_path):  # noqa: F811
    import torch

    from galmerge.models.model import build_model

    tmp, ckpt, _ = env
    (tmp / "dr16.csv").write_text(CASJOBS)

    def other_backbone(payload):
        payload["model"] = build_model("resnet18", 3, 16).state_dict()

    def missing_weights(payload):
        payload["model"].pop("head.0.weight")

    def no_preprocess(payload):
        payload.pop("preprocess")

    for edit in (other_backbone, missing_weights, no_preprocess):
        make_checkpoint(ckpt)
        payload = torch.load(ckpt, weights_only=True)
        edit(payload)
        from galmerge.models.model import save_checkpoint

        save_checkpoint(ckpt, payload)
        res = _run("classify", str(tmp / "dr16.csv"), "--model", str(ckpt), "--survey",
                   "stamps", "--cache", str(tmp / "c.h5"), "--quiet")
        lines = res.output.strip().splitlines()
        assert res.exit_code != 0 and len(lines) == 1 and str(ckpt) in lines[0], \
            (edit.__name__, res.output)


def test_a_truncated_fits_table_is_one_line(env):  # noqa: F811
    import numpy as np
    from astropy.table import Table

    tmp, ckpt, _ = env
    n = 2000
    Table({"objid": np.arange(n), "ra": np.full(n, 150.0), "dec": np.linspace(0, 10, n)}).write(
        tmp / "cat.fits")
    blob = (tmp / "cat.fits").read_bytes()
    (tmp / "cat.fits").write_bytes(blob[: len(blob) // 2])  # NAXIS2 says 2000 rows
    res = _run("classify", str(tmp / "cat.fits"), "--model", str(ckpt), "--survey", "stamps",
               "--quiet", "--output", str(tmp / "o.csv"))
    lines = res.output.strip().splitlines()
    assert res.exit_code != 0 and len(lines) == 1 and "truncated" in lines[0], res.output
    assert not (tmp / "o.csv").exists()


def test_a_malformed_metrics_csv_is_one_line_in_evaluate(tmp_path):
    from eval_helpers import tiny_run, write_pair

    source, target = write_pair(tmp_path / "data", n=24)
    tiny_run(tmp_path / "run", source, target, epochs=1)
    (tmp_path / "run" / "metrics.csv").write_text("epoch,loss\n1,abc\n2,\"unterminated\n")
    res = _run("evaluate", str(tmp_path / "run"))
    lines = res.output.strip().splitlines()
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), repr(res.exception)
    assert len(lines) == 1 and "metrics.csv" in lines[0], res.output


def test_a_run_in_which_every_fetch_failed_exits_nonzero(env):  # noqa: F811
    tmp, ckpt, _ = env
    (tmp / "cat.csv").write_text("objID,ra,dec\nfail-1,150.0,2.0\nfail-2,151.0,2.0\n")
    res = _run("classify", str(tmp / "cat.csv"), "--model", str(ckpt), "--survey", "stamps",
               "--quiet", "--cache", str(tmp / "c.h5"), "--output", str(tmp / "o.csv"))
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and "every fetch failed" in lines[0], \
        res.output
    assert [r[-1] for r in read_csv(tmp / "o.csv")[1]] == [
        "fetch-failed: HTTP 500 from fake server"] * 2  # the output is still written


def test_resume_from_a_last_pt_of_another_backbone_is_one_line(tmp_path):
    import torch
    from eval_helpers import tiny_run, write_pair

    from galmerge.models.model import build_model, save_checkpoint

    source, target = write_pair(tmp_path / "data", n=24)
    run = tmp_path / "run"
    tiny_run(run, source, target, epochs=2, max_steps_per_epoch=1)
    payload = torch.load(run / "last.pt", weights_only=True)
    payload["model"] = build_model("resnet18", 3, 16).state_dict()
    save_checkpoint(run / "last.pt", payload)
    res = _run("train", "--resume", str(run), "--quiet")
    lines = res.output.strip().splitlines()
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), repr(res.exception)
    # (the trainer's "device" line may come first; the error is one line, last)
    assert "last.pt" in lines[-1] and "Missing key" in lines[-1], res.output


# -- item 7: stamps fetched but not yet committed survive a SIGTERM ---------------------------

def test_sigterm_keeps_every_fetched_stamp(env):  # noqa: F811
    import signal
    import subprocess
    import sys
    import time
    from collections import Counter

    from test_classify import _catalog, _script, _sub_env, fetch_lines

    tmp, ckpt, log = env
    _catalog(tmp / "cat.csv", 60)
    cmd = [sys.executable, str(_script(tmp)), "classify", str(tmp / "cat.csv"), "--model",
           str(ckpt), "--survey", "stamps", "--quiet", "--cache", str(tmp / "c.h5"),
           "--output", str(tmp / "out.csv")]  # one chunk: nothing committed before the end
    proc = subprocess.Popen(cmd, env=_sub_env(log, delay="0.05"))
    deadline = time.monotonic() + 60
    while len(fetch_lines(log)) < 15:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    fetched = len(fetch_lines(log))
    subprocess.run(cmd, env=_sub_env(log), check=True, timeout=120)
    counts = Counter(fetch_lines(log))
    # at most the request in flight: the fake survey logs a fetch before it hands the stamp
    # over, and a SIGTERM between the two (a few ms of rendering) loses a stamp galmerge never
    # received (it failed so once in CI); every stamp galmerge received is kept
    assert sum(c - 1 for c in counts.values()) <= 1, counts.most_common(3)
    assert len(counts) == 60 and fetched >= 15


def test_a_latin1_column_name_reaches_h5_and_fits_output(env):  # noqa: F811
    import h5py
    from astropy.table import Table

    tmp, ckpt, _ = env
    (tmp / "cat.csv").write_bytes(b"objid,ra,dec,magnitud_\xe9\n1,150.0,1.0,17.5\n")
    for out in ("o.h5", "o.fits"):
        res = _run("classify", str(tmp / "cat.csv"), "--model", str(ckpt), "--survey",
                   "stamps", "--quiet", "--output", str(tmp / out), "--cache",
                   str(tmp / "c.h5"))
        assert res.exit_code == 0, res.output
    with h5py.File(tmp / "o.h5") as f:
        # the exact name (its byte as a lone surrogate) is kept in the `columns` attribute
        assert json.loads(f.attrs["columns"])[3] == "magnitud_\udce9"
        name = json.loads(f.attrs["datasets"])[3]
        assert name == "magnitud_%E9" and f[name][0] == b"17.5"  # CSV cells verbatim
        assert [s.decode() for s in f["status"][()]] == ["ok"]
    back = Table.read(tmp / "o.fits")
    assert back.colnames[3] == "magnitud_%E9" and back[back.colnames[3]][0] == "17.5"
    assert list(back["status"]) == ["ok"]


def test_column_names_fits_cannot_hold_as_given_become_distinct_fits_names(env):  # noqa: F811
    # two Greek names made ASCII with "?" clashed, and a 100-character name is longer than a
    # card: the run fetched and classified every row, then failed writing the file
    from astropy.table import Table

    tmp, ckpt, _ = env
    long = "x" * 100
    (tmp / "cat.csv").write_text(f"objid,\u03b1,\u03b4,{long},{long[:68]}\n1,150.0,1.0,7,8\n",
                                 encoding="utf-8")
    res = _run("classify", str(tmp / "cat.csv"), "--model", str(ckpt), "--survey", "stamps",
               "--quiet", "--output", str(tmp / "o.fits"), "--ra-col", "\u03b1", "--dec-col",
               "\u03b4", "--cache", str(tmp / "c.h5"))
    assert res.exit_code == 0, res.output
    back = Table.read(tmp / "o.fits")
    assert back.colnames[:5] == ["objid", "%CE%B1", "%CE%B4", long[:68], long[:66] + "_1"]
    assert [back[c][0] for c in back.colnames[3:5]] == ["7", "8"]  # CSV cells verbatim
    assert list(back["status"]) == ["ok"]


def test_a_survey_argument_classify_cannot_use_is_refused(env):  # noqa: F811
    from galmerge.data.datasets import load_imageset

    tmp, ckpt, log = env
    (tmp / "dr16.csv").write_text(CASJOBS)
    res = _run("classify", str(tmp / "dr16.csv"), "--model", str(ckpt), "--survey",
               "stamps:extra?workers=2", "--quiet", "--output", str(tmp / "o.csv"))
    lines = res.output.strip().splitlines()
    assert res.exit_code != 0 and len(lines) == 1, res.output
    assert "'stamps'" in lines[0] and "':extra'" in lines[0] and "--survey stamps" in lines[0]
    assert not (tmp / "o.csv").exists() and not log.exists()  # refused before any fetch
    # surveys whose training sets take an argument keep it
    assert len(load_imageset("synthetic:sdss?n=8&size=16")) == 8


def test_an_unterminated_quote_names_the_input_lines_it_swallowed(env):  # noqa: F811
    tmp, ckpt, _ = env
    (tmp / "cat.csv").write_text(
        "#Table1\n"
        "objid,ra,dec,note\n"            # line 2
        "1,150.0,1.0,a\n"
        "2,150.1,1.1,\"never closed\n"   # line 4: swallows lines 5-6 up to the next quote
        "3,150.2,1.2,x\n"
        "4,150.3,1.3,\"quoted\"\n"
        "5,150.4,1.4,\"multi\nline\"\n"  # a well-formed quoted line break is no bad row
        "6,150.5,1.5,\"open to the end\n"
        "7,150.6,1.6,y\n")
    res = _run("classify", str(tmp / "cat.csv"), "--model", str(ckpt), "--survey", "stamps",
               "--quiet", "--output", str(tmp / "o.csv"), "--cache", str(tmp / "c.h5"))
    assert res.exit_code == 0, res.output
    header, rows = read_csv(tmp / "o.csv")
    assert [r[0] for r in rows] == ["1", "2", "5", "6"]
    assert [r[-1] for r in rows] == ["ok", "bad-row: unterminated quote, input lines 4-6", "ok",
                                     "bad-row: unterminated quote, input lines 9-10"]
    assert rows[1][3] == "never closed\n3,150.2,1.2,x\n4,150.3,1.3,quoted\""  # nothing lost


def test_a_password_in_a_survey_url_is_never_shown(tmp_path, monkeypatch):
    # a private mirror behind basic auth: the breaker's and the failure budget's lines (which
    # classify exits with) and the summary's service name showed user:password@host
    from fake_sdss import FakeSdss
    from test_classify import _sdss_checkpoint

    from galmerge.io.http import FetchError, RetryingClient, RetryPolicy

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GALMERGE_DATA", str(tmp_path / "data"))
    ckpt = _sdss_checkpoint(tmp_path / "best.pt")
    with FakeSdss() as fake:
        fake.add_fault("frame-", "500", times=-1)
        monkeypatch.setenv("GALMERGE_SDSS_SKYSERVER_URL", fake.url.replace("://", "://al:s3cret@"))
        monkeypatch.setenv("GALMERGE_SDSS_SAS_URL", fake.sas_url.replace("://", "://al:s3cret@"))
        cat = tmp_path / "c.csv"
        cat.write_text("objID,ra,dec\n" + "".join(f"{i},{g.ra},{g.dec}\n"
                                                   for i, g in enumerate(fake.galaxies)))
        res = _run("classify", str(cat), "--model", str(ckpt), "--survey",
                   "sdss?attempts=1&max_failed_requests=1", "--cache", str(tmp_path / "c.h5"),
                   "--output", str(tmp_path / "o.csv"))
        host = fake.sas_url.split("://", 1)[1].split("/", 1)[0]
    assert res.exit_code != 0 and "fetching stopped" in res.output, res.output
    assert f"{host}: 1 requests in a row failed" in res.output  # the host, and only it
    # shown as every recorded URL is: its user info as *** (galmerge.shown_url)
    assert f"asked of survey 'sdss' (http://***@{host}" in res.output
    assert "s3cret" not in res.output and "al:" not in res.output
    client = RetryingClient(RetryPolicy(attempts=1, timeout=2, max_connection_failures=1),
                            name="sdss", sleep=lambda s: None)
    port = _closed_port()
    with pytest.raises(FetchError):
        client.get(f"http://al:s3cret@127.0.0.1:{port}/frame")
    assert client.unreachable == f"127.0.0.1:{port}"
