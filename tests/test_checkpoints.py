"""checkpoints.py: the model directory every tool reads (written, read back, refused with a clear line), and
train.py's checkpoints under faults: a bucket URL (fsspec's in-memory filesystem, no rename), a commit cut
short, a truncated checkpoint, a flipped bit, a full disk, a store that goes down, a kill before the final
export, a changed model, a second run, a next stage started from an unfinished run.

In-process runs of the 2-layer model on train_worker's synthetic data (`tr`: conftest.py); the signal tests
that need processes of their own (a SIGKILL, several hosts) are in test_train.py.
"""
import dataclasses
import errno
import json
import os
import socket
import struct
import subprocess
import sys
import shutil
import uuid

import jax
import numpy as np
import pytest

import checkpoints
import model
import storage
import train_worker
from helpers import random_params

ARGS = [*train_worker.TINY, "--batch_size=8", "--seq_len=16", "--max_steps=6", "--warmup_steps=2", "--lr=1e-2",
        "--log_interval=1", "--eval_interval=100", "--ckpt_interval=2"]


def train(tr, out, *args):
    tr.main([*ARGS, f"--out_dir={out}", *args])


def final_params(out):
    """out_dir's exported model, read through the same storage layer as every tool."""
    import sample
    return checkpoints.flatten(sample.load(str(out))[0])


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ----------------------------------------------------------------------------- the model directory

SMALL = model.Config(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=32)


def test_a_model_directory_round_trips_bitwise_locally_and_at_a_url(tmp_path):
    params, tok = random_params(SMALL), train_worker.fake_tokenizer()
    for path in (str(tmp_path / "m"), f"memory://bucket-{uuid.uuid4().hex}/m"):
        checkpoints.save_model(path, params, dataclasses.replace(SMALL, dtype="bfloat16", remat="full"), tok,
                               chat_template="{{ x }}")
        loaded, config, tokenizer = checkpoints.load_model(path)
        assert config == SMALL  # stored as the architecture: no compute knobs
        assert jax.tree.structure(loaded) == jax.tree.structure(params)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
            assert b.dtype == np.float32 and np.array_equal(np.asarray(a), b)
        assert tokenizer.to_str() == tok.to_str() and checkpoints.read_chat_template(path) == "{{ x }}"
        assert storage.listdir(path) == ["chat_template.jinja", "config.json", "model.safetensors",
                                         "tokenizer.json"]  # no temp files
        listed = json.loads(storage.read_bytes(storage.join(path, "config.json")))["files"]  # written last, listing
        assert listed == {name: storage.fingerprint(storage.read_bytes(storage.join(path, name)))  # the rest
                          for name in ("chat_template.jinja", "model.safetensors", "tokenizer.json")}


def test_a_model_directory_that_cannot_be_read_is_one_clear_error(tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="not a smallcoder checkpoint"):
        checkpoints.load_model(str(tmp_path))
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / checkpoints.CONFIG_FILE).write_text(json.dumps({"model_type": "llama", "architectures": ["Llama"]}))
    with pytest.raises(checkpoints.CheckpointError, match="Hugging Face checkpoint.*convert.py --from-hf"):
        checkpoints.load_model(str(hf))
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / checkpoints.CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(SMALL)))
    with pytest.raises(checkpoints.CheckpointError, match="no model.safetensors"):
        checkpoints.load_model(str(ours))
    (ours / checkpoints.CONFIG_FILE).write_text(json.dumps({**dataclasses.asdict(SMALL), "n_embd": 3}))
    with pytest.raises(checkpoints.CheckpointError, match="unknown keys.*n_embd"):
        checkpoints.load_model(str(ours))
    (ours / checkpoints.CONFIG_FILE).write_text("{not json")
    with pytest.raises(checkpoints.CheckpointError, match="config.json is not JSON"):
        checkpoints.load_model(str(ours))
    checkpoints.save_model(str(ours), random_params(SMALL), SMALL, train_worker.fake_tokenizer())
    (ours / checkpoints.CONFIG_FILE).write_text(json.dumps({**dataclasses.asdict(SMALL), "d_ff": 128}))
    with pytest.raises(checkpoints.CheckpointError, match="does not match"):
        checkpoints.load_model(str(ours))
    (ours / checkpoints.CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(SMALL)))
    (ours / checkpoints.TOKENIZER_FILE).unlink()
    with pytest.raises(checkpoints.CheckpointError, match="has no tokenizer.json"):
        checkpoints.load_model(str(ours))


def flip_a_bit(file):
    """Flip the low bit of the last ASCII digit of `file`: in safetensors, a bit of the weights (the header stays
    valid); in JSON, a digit that stays a digit (the file still parses). Damage only a checksum can see."""
    raw = bytearray(file.read_bytes())
    at = max(i for i, byte in enumerate(raw) if 0x30 <= byte <= 0x39)
    raw[at] ^= 1
    file.write_bytes(bytes(raw))


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "chat_template.jinja"])
def test_a_flipped_bit_in_a_model_directory_is_one_line_naming_the_file(tmp_path, capsys, name):
    """Every tool that reads a model directory checks each file against config.json's list (issue 30, case 3):
    sample.py, convert.py and eval_code.py (and init_from) say which file is damaged, in one line."""
    import convert
    import eval_code
    path = tmp_path / "m"
    checkpoints.save_model(str(path), random_params(SMALL), SMALL, train_worker.fake_tokenizer(), "{{ '1' }}")
    flip_a_bit(path / name)
    read = checkpoints.read_chat_template if name == "chat_template.jinja" else checkpoints.load_model
    with pytest.raises(storage.CorruptFile, match=f"{path / name} is damaged"):
        read(str(path))
    with pytest.raises(SystemExit) as e:
        convert.main(["--ckpt", str(path), "--out", str(tmp_path / "hf")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and f"{path / name} is damaged" in err
    if name == "chat_template.jinja":  # read by convert.py and --chat only
        return
    assert eval_code.main(["--ckpt", str(path), "--task", "humaneval", "--limit=1", "--impl=reference"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("note: ")]  # (offline)
    assert len(err) == 1 and f"{path / name} is damaged" in err[0]
    p = subprocess.run([sys.executable, "sample.py", "--ckpt", str(path), "--prompt", "t1"], capture_output=True,
                       text=True, cwd=os.path.dirname(checkpoints.__file__), timeout=120)
    assert p.returncode == 2 and p.stdout == "" and p.stderr.count("\n") == 1, p.stderr
    assert f"{path / name} is damaged" in p.stderr and "Traceback" not in p.stderr


def test_a_checkpoint_written_before_the_attention_key_was_retired_loads(tmp_path):
    checkpoints.save_model(str(tmp_path), random_params(SMALL), SMALL, train_worker.fake_tokenizer())
    (tmp_path / checkpoints.CONFIG_FILE).write_text(json.dumps({**dataclasses.asdict(SMALL), "attention": "fused"}))
    assert checkpoints.load_model(str(tmp_path))[1] == SMALL


# ----------------------------------------------------------------------------- a run's checkpoints

@pytest.fixture(scope="module")
def reference(tr, tmp_path_factory):
    """A local, uninterrupted 6-step run: what every recovered run must end with, bit for bit."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(tr, out)
    return out, final_params(out)


def test_bucket_url_run_commits_and_resumes(tr, reference, capsys):

    out = f"memory://bucket-{uuid.uuid4().hex}/run"
    train(tr, out)
    assert_same(final_params(out), reference[1])
    steps = storage.join(out, "checkpoints")
    assert storage.listdir(steps) == ["step_00000002", "step_00000004", "step_00000006"]
    assert storage.listdir(storage.join(steps, "step_00000006")) == [
        "data_0.json", "opt.safetensors", "params.safetensors", "state.json", "tokenizer.json"]  # no tmp files
    assert [json.loads(x)["step"] for x in storage.read_bytes(storage.join(out, "metrics.jsonl")).splitlines()] == [
        1, 2, 3, 4, 5, 6]
    assert not storage.exists(storage.join(out, "LOCK"))  # released at the end
    # A save cut off before its commit (state.json): that step does not exist, and the rerun redoes it.
    storage.remove(storage.join(steps, "step_00000006", "state.json"))
    storage.remove(storage.join(out, checkpoints.WEIGHTS_FILE))
    capsys.readouterr()
    train(tr, out)
    assert "resuming from " + storage.join(steps, "step_00000004") in capsys.readouterr().out
    assert_same(final_params(out), reference[1])
    train(tr, f"{out}-sft", "--max_steps=2", f"--init_from={out}", "--model_overrides={}")  # the next stage
    assert "initialised from " + out in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["cut in half", "a flipped bit"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tr, reference, tmp_path, capsys, damage):
    """A copy or disk that lost the weights' tail, or one bit of them (issue 30, case 3: the run went on with
    wrong weights): state.json's fingerprint of params.safetensors tells, and the run resumes from step 4."""
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    params = out / "checkpoints" / "step_00000006" / "params.safetensors"
    if damage == "cut in half":
        params.write_bytes(params.read_bytes()[: params.stat().st_size // 2])
    else:
        flip_a_bit(params)
    capsys.readouterr()
    train(tr, out, "--max_steps=8")  # the lr schedule is longer, but steps 5-6 redo from step 4 first
    captured = capsys.readouterr()
    assert f"warning: {params.parent} is unreadable (CorruptFile: {params} is damaged (" in captured.err
    assert "trying the checkpoint before it" in captured.err
    assert f"resuming from {out / 'checkpoints' / 'step_00000004'}" in captured.out
    assert checkpoints.latest_checkpoint(str(out)).endswith("step_00000008")
    assert checkpoints.read_step(str(params.parent)).meta["step"] == 6  # rewritten whole, uncommitted first


@pytest.mark.parametrize("name", ["params.safetensors", "opt.safetensors", "tokenizer.json", "data_0.json"])
def test_a_flipped_bit_in_any_file_of_a_step_falls_back_to_the_one_before(reference, tmp_path, capsys, name):
    """Every file read_step reads is checked against state.json's list before it is parsed: a data position or
    a tokenizer that still parses, but wrong, is damage like a broken one."""
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    step = out / "checkpoints" / "step_00000006"
    flip_a_bit(step / name)
    assert checkpoints.resume_point(str(out)).meta["step"] == 4
    assert f"{step} is unreadable (CorruptFile: {step / name} is damaged (" in capsys.readouterr().err
    assert json.loads((step / "state.json").read_text())["files"].keys() == {
        "params.safetensors", "opt.safetensors", "tokenizer.json", "data_0.json"}  # every file, none more


def test_a_store_that_is_down_is_no_damage_the_run_stops_instead_of_falling_back(reference, monkeypatch, capsys):
    """StoreUnavailable (storage.py's retries gave up) says nothing about the checkpoint: resuming from an older
    one would throw away good steps, so it reaches the user (train.py's one line), and no warning is printed."""
    read = storage.read_bytes

    def down_at_step_6(path):
        if "step_00000006" in path and path.endswith(".safetensors"):
            raise storage.StoreUnavailable(f"{path}: the store kept failing (503) for 120 s")
        return read(path)
    monkeypatch.setattr(storage, "read_bytes", down_at_step_6)
    with pytest.raises(storage.StoreUnavailable, match="kept failing"):
        checkpoints.resume_point(str(reference[0]))
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("file, damage", [("state.json", "{}"), ("state.json", "null"), ("state.json", "{"),
                                          ("tokenizer.json", "not a tokenizer")])
def test_a_damaged_record_in_the_latest_checkpoint_falls_back_to_the_one_before(reference, tmp_path, capsys, file,
                                                                               damage):
    """A commit record that is valid JSON but not a record ({} or null), or a tokenizer.json that is not one: the
    step is unreadable like a truncated one, never a traceback on every rerun (issue 30, case 2)."""
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    (out / "checkpoints" / "step_00000006" / file).write_text(damage)
    assert checkpoints.resume_point(str(out)).meta["step"] == 4
    err = capsys.readouterr().err
    assert "step_00000006 is unreadable" in err and "trying the checkpoint before it" in err


def test_a_full_disk_during_a_save_commits_no_partial_step(tr, reference, tmp_path, monkeypatch, capsys):
    out, write = tmp_path / "run", storage.write_bytes

    def full_at_step_4(path, payload, exclusive=False):
        if "step_00000004" in path and path.endswith("opt.safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return write(path, payload, exclusive)
    monkeypatch.setattr(storage, "write_bytes", full_at_step_4)
    with pytest.raises(SystemExit) as e:
        train(tr, out)
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("error: saving ") and "No space left on device" in err
    assert err.endswith("resumes from " + str(out / "checkpoints" / "step_00000002") + "\n")
    assert checkpoints.steps(str(out)) == [2] and not (out / "LOCK").exists()  # step 4 is not committed
    monkeypatch.setattr(storage, "write_bytes", write)  # space freed: the same command resumes from step 2
    train(tr, out)
    assert_same(final_params(out), reference[1])
    assert sorted(os.listdir(out / "checkpoints" / "step_00000004")) == [  # its partial files gone, it is whole
        "data_0.json", "opt.safetensors", "params.safetensors", "state.json", "tokenizer.json"]


@pytest.mark.parametrize("error", [storage.StoreUnavailable, TimeoutError])
def test_a_store_that_goes_down_during_a_save_stops_in_one_line_naming_the_last_checkpoint(
        tr, reference, tmp_path, monkeypatch, capsys, error):
    """The store fails past its retries while step 4 is written (StoreUnavailable, or an OSError such as a
    timeout) and stays down: the run asks it nothing more, and exits with one line naming the checkpoint a rerun
    resumes from, which it knows (issue 30, case 7: the handler called the store again; a traceback followed)."""
    out, real, down = tmp_path / "run", {}, []  # down: the calls since the store went down

    def store(name):
        def call(path, *args, **kwargs):
            if down or (name == "write_bytes" and "step_00000004" in path and path.endswith("opt.safetensors")):
                down.append(f"{name} {os.path.basename(path)}")
                raise error(f"{path}: the store kept failing (503) for 120 s")
            return real[name](path, *args, **kwargs)
        return call
    for name in ("write_bytes", "read_bytes", "exists", "listdir", "remove"):
        real[name] = getattr(storage, name)
        monkeypatch.setattr(storage, name, store(name))
    with pytest.raises(SystemExit) as e:
        train(tr, out)
    assert e.value.code == 1 and capsys.readouterr().err == (  # one line, no traceback
        f"error: saving {out / 'checkpoints' / 'step_00000004'} failed ({out / 'checkpoints' / 'step_00000004'}/"
        f"opt.safetensors: the store kept failing (503) for 120 s). Free space or wait for the store, then rerun "
        f"the same command: it resumes from {out / 'checkpoints' / 'step_00000002'}\n")
    # The failed write; then only the lock's release asked the store again (best effort: its errors suppressed).
    assert down == ["write_bytes opt.safetensors", "read_bytes LOCK"]
    monkeypatch.undo()  # the store is back: the same command resumes from step 2 and ends where the reference did
    (out / "LOCK").unlink()  # left by the store being down; a new process would break it (its holder is dead)
    capsys.readouterr()
    train(tr, out)
    assert f"resuming from {out / 'checkpoints' / 'step_00000002'}" in capsys.readouterr().out
    assert_same(final_params(out), reference[1])


def test_a_rerun_after_the_last_checkpoint_completes_the_export(tr, reference, tmp_path, capsys):
    out = tmp_path / "run"
    train(tr, out, "--max_steps=4")
    (out / checkpoints.WEIGHTS_FILE).unlink()  # killed after the final checkpoint, before out_dir's model was written
    (out / checkpoints.CONFIG_FILE).write_text("{")
    capsys.readouterr()
    train(tr, out, "--max_steps=4")
    assert "is the last step (4)" in capsys.readouterr().out
    from safetensors.numpy import load_file
    assert_same(final_params(out), load_file(str(out / "checkpoints" / "step_00000004" / "params.safetensors")))


def test_init_from_a_run_that_stopped_early_is_refused_unless_asked(tr, reference, tmp_path, monkeypatch,
                                                                   capsys):
    """A finished run is marked in its last state.json; a next stage's init_from of a run stopped early (here
    SIGTERM at step 3 of 6) is refused in one line saying how far it got, unless --init_from_unfinished (issue
    30, case 8). A finished run, and a directory with no checkpoints (an import, an export), are taken."""
    stopped = tmp_path / "stopped"
    monkeypatch.setenv("KILL_AT", "3")
    monkeypatch.setenv("SIGNAL", "TERM")  # train_worker's batches send it while step 3's batch is read
    train(tr, stopped)
    monkeypatch.delenv("KILL_AT")
    assert "SIGTERM: saved step 3 of 6" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        train(tr, tmp_path / "next", "--max_steps=2", f"--init_from={stopped}", "--model_overrides={}")
    assert e.value.code == 2 and capsys.readouterr().err == (
        f"error: init_from {stopped}: its run stopped at step 3 of 6: its model is half-trained. Finish that run "
        f"(rerun its command), or pass --init_from_unfinished to start from it as it is\n")
    assert not (tmp_path / "next" / "checkpoints").exists()
    train(tr, tmp_path / "next", "--max_steps=2", f"--init_from={stopped}", "--model_overrides={}",
          "--init_from_unfinished")
    assert f"initialised from {stopped} (fresh optimizer)" in capsys.readouterr().out
    export = tmp_path / "export"  # a model directory alone: no run to ask
    checkpoints.save_model(str(export), *checkpoints.load_model(str(stopped)))
    for source in (reference[0], export):
        train(tr, tmp_path / f"after-{source.name}", "--max_steps=2", f"--init_from={source}", "--model_overrides={}")
        assert f"initialised from {source} (fresh optimizer)" in capsys.readouterr().out
    for run, mark in ((stopped, (3, 6, False)), (reference[0], (6, 6, True))):  # the mark: its last state.json
        last = json.loads(storage.read_bytes(storage.join(checkpoints.latest_checkpoint(str(run)), "state.json")))
        assert (last.get("step"), last.get("steps"), last.get("finished")) == mark


def test_resume_refuses_another_model_and_keeps_init_from_shapes(tr, tmp_path, capsys):
    first = tmp_path / "s1"
    train(tr, first, "--max_steps=2")
    overrides = train_worker.TINY[2]
    for old, new, named in [("'d_ff': 128", "'d_ff': 256", "(d_ff 128 -> 256)"),
                            ("'n_layers': 2", "'n_layers': 3", "(n_layers 2 -> 3)")]:
        with pytest.raises(SystemExit) as e:
            train(tr, first, "--max_steps=4", overrides.replace(old, new))
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and "holds another model than this run asks for" in err
        assert named in err
    # A stage initialised from s1, whose model came from overrides: its own run names no overrides at all.
    second = tmp_path / "s2"
    train(tr, second, "--max_steps=2", f"--init_from={first}", "--model_overrides={}")
    train(tr, second, "--max_steps=4", f"--init_from={first}", "--model_overrides={}")  # resumes: s1's model
    assert "resuming from" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        train(tr, tmp_path / "s2b", "--max_steps=2", f"--init_from={first}", "--model_overrides={'d_ff': 256}")
    assert "change the shapes of init_from's weights (d_ff 128 -> 256)" in capsys.readouterr().err


def test_a_second_live_run_is_refused_and_a_dead_ones_lock_is_broken(tr, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    lock = out / "LOCK"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        here = socket.gethostname()
        for holder in ({"host": here, "pid": sleeper.pid}, {"host": "other-vm", "pid": 1}):
            lock.write_text(json.dumps({**holder, "since": "2026-11-30 09:00:00"}))
            with pytest.raises(SystemExit) as e:
                train(tr, out, "--max_steps=2")
            err = capsys.readouterr().err
            assert e.value.code == 2 and f"is in use by pid {holder['pid']} on {holder['host']} since " in err
            assert "rerun with --break_lock" in err and not (out / "checkpoints").exists()
        train(tr, out, "--max_steps=2", "--break_lock")  # the other host's run is known dead: take it over
        assert "breaking the lock of pid 1 on other-vm" in capsys.readouterr().out and not lock.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    lock.write_text(json.dumps({"host": here, "pid": sleeper.pid, "since": "2026-11-30 09:00:00"}))  # now dead
    train(tr, out, "--max_steps=4")
    assert f"breaking the lock of pid {sleeper.pid}" in capsys.readouterr().out and not lock.exists()


def tensorboard_scalars(event_file):
    """{tag: {step: value}} of a TensorBoard event file (TFRecord frames: length, crc, Event proto, crc)."""
    from tensorboardX.proto.event_pb2 import Event
    raw, pos, out = event_file.read_bytes(), 0, {}
    while pos < len(raw):
        (length,) = struct.unpack("<Q", raw[pos:pos + 8])
        event = Event.FromString(raw[pos + 12:pos + 12 + length])
        pos += 16 + length
        for v in event.summary.value:
            out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out


def wandb_history(run_file):
    """(run id, [history rows]) of an offline W&B run file (LevelDB-log framing of wandb's Record protos)."""
    from wandb.proto.wandb_internal_pb2 import Record
    raw, pos, chunk, run_id, rows = run_file.read_bytes(), 7, b"", None, []
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack("<HB", raw[pos + 4:pos + 7])
        chunk, pos = chunk + raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record, chunk = Record.FromString(chunk), b""
            run_id = record.run.run_id if record.HasField("run") else run_id
            if record.HasField("history"):
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return run_id, rows


def test_tensorboard_and_wandb_get_the_metrics_records_and_a_resume_continues_them(tr, tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX")  # optional packages (requirements-dev.txt installs both)
    pytest.importorskip("wandb")
    import importlib.util
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out, tb = tmp_path / "run", tmp_path / "tb"
    args = ["--max_steps=4", f"--tensorboard={tb}", "--wandb_project=smallcoder-test"]
    train(tr, out, *args)
    (out / "checkpoints" / "step_00000004" / "state.json").unlink()  # preempted before step 4's commit
    train(tr, out, *args)  # resumes from step 2
    logged = {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    first, second = sorted(tb.iterdir())
    assert tensorboard_scalars(first)["loss"] == pytest.approx({s: logged[s]["loss"] for s in (1, 2, 3, 4)})
    assert tensorboard_scalars(second)["loss"] == pytest.approx({s: logged[s]["loss"] for s in (3, 4)})
    assert tensorboard_scalars(second)["lr"] == pytest.approx({s: logged[s]["lr"] for s in (3, 4)})
    runs = [wandb_history(f) for f in sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))]
    assert len(runs) == 2 and runs[0][0] == runs[1][0] == (out / "wandb_run_id").read_text()  # one W&B run
    assert [(r["_step"], r["loss"]) for r in runs[1][1]] == [(s, logged[s]["loss"]) for s in (3, 4)]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(tr.ConfigError, match="^wandb_project needs the wandb package: pip install wandb$"):
        tr.load_run_config([*ARGS, *args])


def test_a_second_ctrl_c_stops_at_once_without_a_traceback(tr, monkeypatch, capsys):
    import signal
    before = signal.getsignal(signal.SIGINT)  # Python's (SIG_IGN where started in the background, as by nohup)
    with checkpoints.Stop() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # the first asks for a checkpoint after this step...
        assert stop.signal == "SIGINT" and stop.requested(7, at_log=False)
        with pytest.raises(KeyboardInterrupt):  # ...the second one interrupts
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # the handler from before is back
    assert "SIGINT: stopping after this step, with a checkpoint" in capsys.readouterr().err

    def interrupted(cfg):
        raise KeyboardInterrupt
    monkeypatch.setattr(tr, "run", interrupted)
    with pytest.raises(SystemExit) as e:
        tr.main([*ARGS, "--out_dir=unused"])
    err = capsys.readouterr().err
    assert e.value.code == 130 and err.strip() == "interrupted: stopped without a checkpoint; a rerun resumes " \
        "from the last one" and "Traceback" not in err
