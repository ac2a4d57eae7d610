"""Resume after SIGKILL and torchrun DDP: real subprocesses running the real trainer."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_toys import ToyPlugin, _NoNone, toy_sets

import galmerge

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "train_toys.py"


@pytest.fixture
def toys(register_plugin, plugin_manager):
    plugin = _NoNone() if "none" in plugin_manager.components("strategies") else ToyPlugin()
    register_plugin(plugin, "toys")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


def _rows(run: Path) -> list[dict[str, float]]:
    with (run / "metrics.csv").open() as fh:
        return [
            {k: float(v) for k, v in r.items() if k != "images_per_s"} for r in csv.DictReader(fh)
        ]


def _reference(tmp_path: Path, name: str, epochs: int, **extra) -> dict:
    """The same run as train_toys.py's __main__, in this process."""
    source, target = toy_sets()
    return galmerge.train(
        source=source, target=target, strategy="meangap", backbone="tiny", epochs=epochs,
        batch_size=8, seed=3, run_dir=tmp_path / name, patience=0, device="cpu", quiet=True,
        **extra,
    )


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(toys, tmp_path):
    reference = _reference(tmp_path, "reference", epochs=4)
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(run), "4", "--checkpoint-every", "3", "--slow"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while not (run / "last.pt").exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "summary.json").exists()  # it really died before the end
    assert not list(run.glob(".*.tmp"))  # no half-written checkpoint left behind

    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(run), "4", "--resume"],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    resumed = json.loads((run / "summary.json").read_text())
    assert _rows(run) == _rows(tmp_path / "reference")
    assert resumed["metrics"] == reference["metrics"]
    assert resumed["best_epoch"] == reference["best_epoch"]
    assert resumed["epochs_run"] == 4


def test_a_second_train_on_a_live_runs_directory_is_refused(toys, tmp_path):
    """A run in its first epoch holds only config.toml, env.json and event files, which a
    second `train --run-dir` took for a start that died: it deleted them and trained into the
    same folder, both exiting 0. The training process now holds the folder's lock: a second
    train, or a `--resume` once the run has a last.pt, is refused in one line, and the first
    run finishes as it would alone."""
    from galmerge.errors import GalmergeError

    run, hold = tmp_path / "run", tmp_path / "hold"
    hold.mkdir()
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(run), "2", "--hold", str(hold)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        for epoch in (1, 2):
            deadline = time.monotonic() + 120
            while not (hold / f"at-{epoch}").exists():  # the first run is in this epoch
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline
                time.sleep(0.05)
            before = {p.name: p.read_bytes() for p in run.iterdir()}
            assert (run / "last.pt").exists() == (epoch == 2)
            with pytest.raises(GalmergeError) as refused:
                if epoch == 1:  # another run into the same folder: it took the folder over
                    _reference(tmp_path, "run", epochs=2, lr=0.01)
                else:
                    galmerge.train(resume=run, quiet=True)
            text = str(refused.value)
            assert len(text.splitlines()) == 1 and "another galmerge train is writing" in text
            assert str(run) in text
            assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # untouched
            (hold / f"go-{epoch}").touch()
        out, _ = proc.communicate(timeout=300)
    finally:
        for epoch in (1, 2):
            (hold / f"go-{epoch}").touch()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 0, out
    assert "seed = 3" in (run / "config.toml").read_text()  # the first run's, throughout
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 2


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name(
    "torchrun").exists(), reason="torchrun not installed")
def test_ddp_two_processes_match_one_process(toys, tmp_path, busy_torchrun_ports):
    # no dropout: per-process dropout masks are the one thing DDP cannot reproduce
    one = _reference(tmp_path, "one", epochs=2, backbone_options={"dropout": 0.0})
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    run = tmp_path / "two"
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(run),
         "2", "--nodrop"],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in run.glob("*.pt")) == ["best.pt", "last.pt"]
    two = json.loads((run / "summary.json").read_text())
    assert two["world_size"] == 2
    for a, b in zip(_rows(tmp_path / "one"), _rows(run), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    for split in ("source_test", "target_test"):
        for key, value in one["metrics"][split].items():
            assert two["metrics"][split][key] == pytest.approx(value, rel=1e-4, abs=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name(
    "torchrun").exists(), reason="torchrun not installed")
def test_ddp_batchnorm_running_statistics_are_those_of_the_whole_batch(
        tmp_path, busy_torchrun_ports):
    """On CPU each rank normalises its own shard of a batch; the running means kept (in
    last.pt, used by validation) are those of the whole batch, as one process keeps them, not
    rank 0's shards'. With lr 1e-12 the weights hardly move, so one process and two see the
    same network; the first BatchNorm layer sees the same inputs in both (deeper ones see
    activations normalised per shard, which differ a little)."""
    from galmerge.models.model import read_checkpoint

    args = ["train", "--source", "synthetic:illustris?n=96", "--target",
            "synthetic:sdss?n=96&seed=1", "--strategy", "none", "--epochs", "1",
            "--max-steps-per-epoch", "4", "--batch-size", "16", "--lr", "1e-12", "--device",
            "cpu", "--quiet"]
    one = _galmerge([*args, "--run-dir", str(tmp_path / "one")], _env())
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun("-m", "galmerge", *args, "--run-dir", str(tmp_path / "two"))
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    weights = [read_checkpoint(tmp_path / run / "last.pt")["model"] for run in ("one", "two")]
    first = next(k for k in weights[0] if k.endswith("running_mean"))
    torch.testing.assert_close(weights[1][first], weights[0][first], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name(
    "torchrun").exists(), reason="torchrun not installed")
def test_ddp_adda_trains_its_source_stage_and_adapts_in_one_process_group(
        tmp_path, busy_torchrun_ports):
    """dann's default (its own target encoder) under torchrun: the source-only stage and the
    adaptation share one process group (a second one cannot form: the run would hang)."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    run = tmp_path / "adda"
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "galmerge", "train",
         "--source", "synthetic:illustris?n=64", "--target", "synthetic:sdss?n=64&seed=1",
         "--strategy", "dann", "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size",
         "8", "--device", "cpu", "--run-dir", str(run), "--quiet"],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for folder in (run, run / "source_only"):
        assert json.loads((folder / "summary.json").read_text())["world_size"] == 2
    assert f'init_from = "{run / "source_only" / "best.pt"}"' in (run / "config.toml").read_text()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name(
    "torchrun").exists(), reason="torchrun not installed")
@pytest.mark.parametrize("layout", ["domain_batchnorm=specific", "target_encoder=separate"])
def test_ddp_adabn_trains_beside_target_parameters_no_term_reaches(
        tmp_path, busy_torchrun_ports, layout):
    """adabn adds no loss term, so the target's own parameters (DSBN's affine ones, ADDA's
    encoder) get no gradient; DDP waited for them and stopped at the second step."""
    from galmerge.models.model import read_checkpoint

    run = tmp_path / "run"
    done = _torchrun("-m", "galmerge", "train", "--source", "synthetic:illustris?n=64",
                     "--target", "synthetic:sdss?n=64&seed=1", "--strategy", "adabn", "--set",
                     layout, "--epochs", "1", "--max-steps-per-epoch", "3", "--batch-size", "8",
                     "--device", "cpu", "--quiet", "--run-dir", str(run))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    model = read_checkpoint(run / "last.pt")["model"]
    # they keep their start: BatchNorm's initial affine, or the source-only stage's encoder
    start = (read_checkpoint(run / "source_only" / "best.pt")["model"]
             if layout.startswith("target_encoder") else None)
    own = [k for k in model if k.rpartition(".")[2] in ("target_weight", "target_bias")]
    assert own
    for key in own:
        head, _, leaf = key.rpartition(".")
        if start is not None:
            expected = start[f"{head}.{leaf.removeprefix('target_')}"]
        else:
            expected = torch.full_like(model[key], 1.0 if leaf == "target_weight" else 0.0)
        assert torch.equal(model[key], expected), key


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    return subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", *args],
        env=_env(), capture_output=True, text=True, timeout=300,
    )


def _draws(folder: Path) -> list[list[str]]:
    return [(folder / f"rank{r}.txt").read_text().split() for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name(
    "torchrun").exists(), reason="torchrun not installed")
def test_ddp_ranks_draw_their_own_dropout_masks_and_resume_them(tmp_path, busy_torchrun_ports):
    """Each process draws its own dropout masks (they all drew rank 0's), and a run stopped at
    a mid-epoch checkpoint or an epoch's end resumes every rank's own random stream: the same
    draws and metrics.csv as the run never stopped."""
    common = ["2", "--checkpoint-every", "3"]
    whole, record = tmp_path / "whole", tmp_path / "whole_rng"
    record.mkdir()
    done = _torchrun(str(SCRIPT), str(whole), *common, "--record-rng", str(record))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    draws = _draws(record)
    assert len(draws[0]) == len(draws[1]) > 3
    assert not set(draws[0]) & set(draws[1])  # no mask of rank 1 is one of rank 0's

    for saves in (1, 2):  # at step 3 (mid-epoch 1), at the end of epoch 1
        run, rng = tmp_path / f"stopped{saves}", tmp_path / f"stopped{saves}_rng"
        rng.mkdir()
        killed = _torchrun(str(SCRIPT), str(run), *common, "--record-rng", str(rng),
                           "--exit-after-save", str(saves))
        assert killed.returncode != 0 and not (run / "summary.json").exists()
        state = torch.load(run / "last.pt", weights_only=True)["training_state"]
        assert (state["epoch"], state["step_in_epoch"]) == ((1, 3) if saves == 1 else (2, 0))
        resumed = _torchrun(str(SCRIPT), str(run), "2", "--resume", "--record-rng", str(rng))
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert _draws(rng) == draws, saves
        assert _rows(run) == _rows(whole), saves


TRAIN = ["train", "--source", "synthetic:illustris?n=64", "--target", "synthetic:sdss?n=64&seed=1",
         "--strategy", "none", "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "8",
         "--device", "cpu", "--quiet"]


def _ranks_env(**variables: str) -> dict[str, str]:
    env = _env()
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env.update(variables)
    return env


def _galmerge(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "galmerge", *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name(
    "torchrun").exists(), reason="torchrun not installed")
def test_ddp_errors_are_one_line_from_rank_0(tmp_path, busy_torchrun_ports):
    """Rank 0's refusal of a run directory reaches every rank (no other rank's traceback from a
    collective rank 0 never reached), and an error every rank raises is printed once."""
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine\n")
    for extra, said in (([], f"run directory {taken} is not empty"),
                        (["--strategy", "nosuch"], "unknown strategy 'nosuch'")):
        done = _torchrun("-m", "galmerge", *TRAIN, "--run-dir", str(taken), *extra)
        output = done.stdout + done.stderr
        assert done.returncode != 0
        errors = [line for line in output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and said in errors[0], output[-3000:]
        assert "[rank" not in output, output[-3000:]
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name(
    "torchrun").exists(), reason="torchrun not installed")
def test_an_error_of_one_rank_only_is_printed_with_its_rank(tmp_path, busy_torchrun_ports):
    """An error only one rank raises after the processes met (its GPU's free memory, here
    faked) is that rank's to print: silencing every non-main error hid it. Rank 0 then stops at
    a collective in one line, not a traceback."""
    script = tmp_path / "rank1_full.py"
    script.write_text(
        "import os, sys\n"
        "import galmerge.training.trainer as trainer\n"
        "from galmerge.errors import GalmergeError\n"
        "real = trainer.check_batch_fits\n"
        "def fake(*args, **kwargs):\n"
        "    if os.environ.get('RANK') == '1':\n"
        "        raise GalmergeError('rank one has no memory left')\n"
        "    return real(*args, **kwargs)\n"
        "trainer.check_batch_fits = fake\n"
        "from galmerge.cli import main\n"
        "sys.argv = ['galmerge', *sys.argv[1:]]\n"
        "main()\n")
    done = _torchrun(str(script), *TRAIN, "--run-dir", str(tmp_path / "r"))
    output = done.stdout + done.stderr
    assert done.returncode != 0
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert "Error: rank 1: rank one has no memory left" in errors, output[-3000:]
    assert all("rank one" in e or "another process of this run stopped" in e
               for e in errors), output[-3000:]
    assert "[rank0]" not in output and "[rank1]" not in output, output[-3000:]


@pytest.mark.slow
def test_a_non_main_rank_leaves_errors_and_aborts_to_rank_0(tmp_path):
    """WORLD_SIZE > 1: rank 0 prints an error or "Aborted!"; any other rank exits 1 silently."""
    args = [*TRAIN, "--strategy", "nosuch", "--run-dir", str(tmp_path / "r")]
    ports = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    main = _galmerge(args, _ranks_env(WORLD_SIZE="2", RANK="0", **ports))
    assert main.returncode == 1 and "unknown strategy 'nosuch'" in main.stderr, main.stderr
    other = _galmerge(args, _ranks_env(WORLD_SIZE="2", RANK="1", **ports))
    assert (other.returncode, other.stdout, other.stderr) == (1, "", "")
    interrupt = ("import click, sys\nfrom galmerge.cli import cli, main\n"
                 "@cli.command('stop')\ndef stop():\n    raise KeyboardInterrupt\n"
                 "sys.argv = ['galmerge', 'stop']\nmain()\n")
    for rank, said in (("0", "Aborted!"), ("1", "")):
        done = subprocess.run([sys.executable, "-c", interrupt], capture_output=True, text=True,
                              env=_ranks_env(WORLD_SIZE="2", RANK=rank), timeout=120)
        assert done.returncode == 1 and done.stderr.strip() == said, (rank, done.stderr)


@pytest.mark.slow
def test_world_size_without_a_rendezvous_is_one_line(tmp_path):
    """WORLD_SIZE/RANK set by hand, no torchrun: one line naming the variables and the fix."""
    run = tmp_path / "r"
    done = _galmerge([*TRAIN, "--run-dir", str(run)],
                     _ranks_env(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0"))
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert all(w in lines[0] for w in ("MASTER_ADDR", "MASTER_PORT", "torchrun", "unset")), lines
    assert not run.exists()


HASH_SPY = """
import json, os, sys
files = {os.path.realpath(p) for p in sys.argv[1:3]}
opens = []


def spy(event, args):  # every open of the data files from Python: sha256_file's reads
    if event == "open" and args and isinstance(args[0], str | bytes | os.PathLike):
        if os.path.realpath(os.fsdecode(args[0])) in files:
            opens.append(os.path.basename(os.fsdecode(args[0])))


sys.addaudithook(spy)
import galmerge.io.hdf5 as hdf5io

scans = []
validate = hdf5io.validate_imageset_file


def counted(path, **kw):  # the schema check and NaN/inf scan, which h5py reads outside Python
    scans.append(os.path.basename(os.fspath(path)))
    return validate(path, **kw)


hdf5io.validate_imageset_file = counted
from galmerge.cli import main
from galmerge.data.datasets import load_imageset

sys.argv = ["galmerge", *sys.argv[3:]]
try:
    main()
except SystemExit as stop:
    if stop.code:
        raise
# the process group is gone: each process says what it recorded for the files (kept per process)
seen = list(scans)
hashes = {os.path.basename(p): load_imageset("hdf5:" + p).meta["file_sha256"] for p in files}
with open(os.environ["SPY_DIR"] + "/rank" + os.environ.get("RANK", "0") + ".json", "w") as fh:
    json.dump({"opens": opens, "hashes": hashes, "scans": seen}, fh)
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name(
    "torchrun").exists(), reason="torchrun not installed")
def test_ddp_hdf5_files_are_hashed_and_scanned_by_rank_0_alone(tmp_path, busy_torchrun_ports):
    """Under torchrun only rank 0 reads each HDF5 file for its SHA-256 and its NaN/inf scan,
    and the other rank records the digest it is sent: every rank read the whole (possibly
    multi-GB) file, twice."""
    import hashlib

    from eval_helpers import write_pair

    specs = write_pair(tmp_path / "data", n=24)
    paths = [s.removeprefix("hdf5:") for s in specs]
    script = tmp_path / "hash_spy.py"
    script.write_text(HASH_SPY)
    run = tmp_path / "r"
    env = _env()
    env["SPY_DIR"] = str(tmp_path)
    done = subprocess.run(
        [shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun")),
         "--standalone", "--nproc_per_node", "2", str(script), *paths, "train", "--source",
         specs[0], "--target", specs[1], "--strategy", "none",
         "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "8", "--device", "cpu",
         "--quiet", "--run-dir", str(run)],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(ranks[0]["opens"]) == ["source.h5", "target.h5"]  # once each, on rank 0
    assert ranks[1]["opens"] == []
    assert sorted(set(ranks[0]["scans"])) == ["source.h5", "target.h5"]
    assert ranks[1]["scans"] == []
    true = {Path(p).name: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}
    assert ranks[0]["hashes"] == ranks[1]["hashes"] == true
    data = json.loads((run / "env.json").read_text())["data"]
    assert [data[role]["meta"]["file_sha256"] for role in ("source", "target")] == [
        true["source.h5"], true["target.h5"]]


SHARED_FAILURE = """
import os, sys
import torch
from galmerge.runtime import distributed as ddp

info = ddp.from_environment()
device = ddp.setup(info, torch.device("cpu"))
with ddp.loading_together(info):
    print("digest", ddp.from_main(lambda: "ab" * 32 if info.is_main else "not run"))
    try:
        ddp.from_main(lambda: (_ for _ in ()).throw(OSError("file vanished on rank 0")))
    except Exception as exc:
        print(type(exc).__name__, exc)
print("outside", ddp.from_main(lambda: "own " + os.environ["RANK"]))
ddp.teardown(info)
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name(
    "torchrun").exists(), reason="torchrun not installed")
def test_rank_0s_digest_or_error_reaches_every_rank(tmp_path, busy_torchrun_ports):
    """`from_main`: rank 0's text reaches rank 1 (which computes nothing); rank 0's failure is
    raised on rank 0 and as a SharedError of the same text on rank 1, not a hang; outside
    `loading_together` each process computes its own."""
    script = tmp_path / "shared.py"
    script.write_text(SHARED_FAILURE)
    done = _torchrun("--tee", "3", str(script))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = {r: [ln.split(":", 1)[1].strip() for ln in done.stdout.splitlines()
                 if ln.startswith(f"[default{r}]")] for r in (0, 1)}
    assert lines[0] == ["digest " + "ab" * 32, "OSError file vanished on rank 0", "outside own 0"]
    assert lines[1] == ["digest " + "ab" * 32, "SharedError file vanished on rank 0",
                        "outside own 1"]


AVERAGE = """
import os
import torch
from galmerge.runtime import distributed as ddp

info = ddp.from_environment()
ddp.setup(info, torch.device("cpu"))
m = torch.nn.BatchNorm1d(3)
rank = int(os.environ["RANK"])
with torch.no_grad():  # the same on every rank, then this rank's own values
    m.running_mean.copy_(torch.tensor([0.4900934100151062, 0.1, float(rank)]))
    m.running_var.fill_(2.0 ** -30 * (rank + 1))
ddp.average_buffers(m, info)
print(repr(m.running_mean.tolist()), repr(m.running_var.tolist()), int(m.num_batches_tracked))
ddp.teardown(info)
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name(
    "torchrun").exists(), reason="torchrun not installed")
def test_buffers_are_averaged_over_ranks_and_equal_ones_stay_bit_for_bit(tmp_path,
                                                                         busy_torchrun_ports):
    """`average_buffers` over three real gloo processes: every rank gets the mean, and a value
    every rank holds (a frozen source path's statistics) stays exactly what it was."""
    script = tmp_path / "average.py"
    script.write_text(AVERAGE)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "3", "--tee", "3",
                           str(script)], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # float32 values; the first is one whose float32 sum over 3 ranks, divided, is not itself
    same = torch.tensor([0.4900934100151062, 0.1]).tolist()
    expected = f"{[*same, 1.0]!r} {[2.0 ** -29] * 3!r} 0"
    lines = [ln.split(":", 1)[1].strip() for ln in done.stdout.splitlines()
             if ln.startswith("[default")]
    assert lines == [expected] * 3, done.stdout
