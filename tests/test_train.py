"""train.py: device-count invariance, multi-host, exact resume, restore on other meshes, gradient accumulation,
parity with transformers + torch AdamW, stage files, config errors, NaN stop.

Runs use a 2-layer d64 model on synthetic batches (tests/train_worker.py); multi-device runs are subprocesses
with simulated CPU devices, sharing one persistent compilation cache.
"""
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS.parent))
sys.path.insert(0, str(TESTS))
import checkpoints  # noqa: E402
import cli  # noqa: E402
import storage  # noqa: E402
import train_worker  # noqa: E402

RUN = ["--batch_size=16", "--seq_len=32", "--grad_accum=2", "--max_steps=6", "--warmup_steps=2", "--lr=1e-2",
       "--log_interval=1", "--eval_interval=3", "--eval_batches=2", "--ckpt_interval=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """run(name, devices, *args, env) -> metrics by step; one compilation cache for all of them."""
    root = tmp_path_factory.mktemp("runs")
    cache = root / "jax-cache"

    def start(out, devices, args, extra_env=None):
        env = dict(os.environ, DEVICES=str(devices), JAX_COMPILATION_CACHE_DIR=str(cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **(extra_env or {}))
        cmd = [sys.executable, str(TESTS / "train_worker.py"), *train_worker.TINY, *RUN, f"--out_dir={out}", *args]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def run(name, devices, *args, env=None, expect=0):
        out = root / name
        p = start(out, devices, args, env)
        run.log = p.communicate(timeout=300)[0]
        assert p.returncode == expect, run.log
        return out, metrics(out)
    run.root, run.start = root, start
    return run


def metrics(out):
    by_step = {}
    for line in open(Path(out) / "metrics.jsonl"):
        r = json.loads(line)
        by_step[r["step"]] = r
    return by_step


def losses(m, key="loss", steps=None):
    return np.array([m[s][key] for s in sorted(m) if (steps is None or s in steps) and key in m[s]])


@pytest.fixture(scope="module")
def one_device(runs):
    return runs("one", 1)


@pytest.fixture(scope="module")
def eight_devices(runs):
    return runs("eight", 8, "--fsdp=4")  # mesh data 2 x fsdp 4


def test_eight_devices_equal_one(one_device, eight_devices):
    (_, m1), (_, m8) = one_device, eight_devices
    assert sorted(m1) == list(range(1, 7))
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(losses(m8, key), losses(m1, key), rtol=1e-5)
    np.testing.assert_allclose(losses(m8, "grad_norm"), losses(m1, "grad_norm"), rtol=1e-4)  # a longer reduction
    assert losses(m1)[-1] < losses(m1)[0]  # it learns something


def free_address():
    with socket.socket() as port:
        port.bind(("localhost", 0))
        return f"localhost:{port.getsockname()[1]}"


def test_two_processes_equal_one(runs, eight_devices):
    addr = free_address()
    out = runs.root / "two-hosts"
    procs = [runs.start(out, 4, ["--fsdp=2", f"--coordinator={addr}", "--num_processes=2", f"--process_id={i}"])
             for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    m = metrics(out)
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(losses(m, key), losses(eight_devices[1], key), rtol=1e-5)
    # each host counts the documents it dropped (process p: p + 1, train_worker): the log holds their sums
    assert [r["decontaminated"]["fake"]["docs"] for r in m.values()] == [3] * len(m)
    assert m[6]["decontaminated"]["fake"]["matched"] == {"HumanEval/0": 3, "MBPP/1": 1, "MBPP/2": 1}
    ckpt = out / "checkpoints" / "step_00000006"
    assert (ckpt / "data_0.json").exists() and (ckpt / "data_1.json").exists()
    # host 0's record lists each host's data file with the fingerprint of what that host wrote (an all-gather)
    listed = json.loads((ckpt / "state.json").read_text())["files"]
    assert listed == {name: storage.fingerprint((ckpt / name).read_bytes()) for name in (
        "data_0.json", "data_1.json", "params.safetensors", "opt.safetensors", "tokenizer.json")}


def test_a_preempted_host_stops_every_host_at_one_step(runs, eight_devices):
    addr = free_address()
    out = runs.root / "two-hosts-preempted"

    def start(i, env=None):
        return runs.start(out, 4, ["--fsdp=2", f"--coordinator={addr}", "--num_processes=2", f"--process_id={i}"],
                          env)
    procs = [start(0, {"KILL_AT": "3", "SIGNAL": "TERM"}), start(1)]  # the notice reaches host 0 only
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    saved = sorted(os.listdir(out / "checkpoints"))
    stop = int(saved[-1][5:])  # the step the service picked: after the notice (at step 3), before the end
    assert 3 <= stop < 6 and saved == [f"step_{k:08d}" for k in sorted({2, 4} & set(range(stop + 1)) | {stop})]
    assert f"preempted: saved step {stop} of 6" in logs[0]
    procs = [start(0), start(1)]  # the same command again resumes there, on both hosts
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    np.testing.assert_allclose(losses(metrics(out)), losses(eight_devices[1]), rtol=1e-5)


def test_resume_after_kill_is_exact(runs, one_device):
    out, _ = runs("killed", 1, env={"KILL_AT": "6"}, expect=-9)  # SIGKILL while fetching step 6's batch
    assert sorted(os.listdir(out / "checkpoints")) == ["step_00000002", "step_00000004"]
    with open(out / "metrics.jsonl", "a") as f:  # and a record cut off mid-write, as a full disk leaves it
        f.write('{"step": 5, "loss": 3.1')
    _, m = runs("killed", 1)  # the same command again resumes from step 4, dropping that line
    assert sorted(m) == list(range(1, 7))
    assert losses(m).tolist() == losses(one_device[1]).tolist()  # bit-identical on CPU
    assert losses(m, "val_loss").tolist() == losses(one_device[1], "val_loss").tolist()


@pytest.mark.parametrize("signal", ["TERM", "INT"])  # a preemption notice; Ctrl-C
def test_a_signal_saves_and_the_same_command_resumes_exactly(runs, one_device, signal):
    out, m = runs(f"stopped-{signal}", 1, env={"KILL_AT": "3", "SIGNAL": signal})  # while fetching step 3's batch
    assert f"SIG{signal}: saved step 3 of 6; rerun the same command to resume" in runs.log
    assert sorted(os.listdir(out / "checkpoints")) == ["step_00000002", "step_00000003"] and sorted(m) == [1, 2, 3]
    assert "LOCK" not in os.listdir(out) and "Traceback" not in runs.log and "done:" not in runs.log
    _, m = runs(f"stopped-{signal}", 1)
    assert sorted(m) == list(range(1, 7))
    assert runs.log.splitlines()[-1] == (f'done: model in {out}; next: python sample.py --ckpt {out} --prompt "def '
                                         f'fibonacci(n):", or python convert.py --ckpt {out} --out hf/{out.name}')
    assert losses(m).tolist() == losses(one_device[1]).tolist()  # bit-identical on CPU
    assert losses(m, "val_loss").tolist() == losses(one_device[1], "val_loss").tolist()


@pytest.mark.parametrize("devices", [1, 4])
def test_restore_on_another_device_count(runs, eight_devices, devices):
    out = runs.root / f"from-eight-on-{devices}"
    shutil.copytree(eight_devices[0], out)
    shutil.rmtree(out / "checkpoints" / "step_00000006")  # continue from step 4
    _, m = runs(out.name, devices, "--fsdp=2" if devices == 4 else "--fsdp=1")
    np.testing.assert_allclose(losses(m, steps={5, 6}), losses(eight_devices[1], steps={5, 6}), rtol=1e-5)


def test_final_out_dir_is_a_model_checkpoint(one_device):
    out = one_device[0]
    params, config, _ = checkpoints.load_model(str(out))
    assert config.n_layers == 2 and config.dtype == "float32"
    assert (out / "tokenizer.json").exists()
    assert sorted(os.listdir(out / "checkpoints")) == ["step_00000002", "step_00000004", "step_00000006"]


# ----------------------------------------------------------------------------- in-process: one device (`tr`: conftest.py)

def setup(tr, *args):
    import jax
    import model
    cfg = tr.load_run_config(train_worker.TINY + ["--batch_size=16", "--seq_len=32", "--max_steps=20", *args])
    mcfg = tr.model_config(cfg)
    mesh = tr.make_mesh(cfg)
    optimizer = tr.make_optimizer(cfg, tr.max_steps(cfg))
    step, _ = tr.make_train_step(mcfg, mesh, optimizer)
    params = model.init(mcfg, jax.random.key(0))
    return cfg, mcfg, mesh, optimizer, step, params


def test_grad_accum_equals_one_big_batch(tr):
    import jax
    rows = train_worker.fake_rows(0, 1, range(16), 32)
    out = {}
    for k in (1, 4):
        cfg, _, mesh, optimizer, step, params = setup(tr, f"--grad_accum={k}", "--clip=1e9")
        state = {"params": params, "opt": optimizer.init(params)}
        for _ in range(2):  # the second update depends on the first one's Adam moments
            state, m = step(state, tr.global_batch(rows, mesh, k))
        out[k] = (float(m["loss"]), jax.device_get(state["params"]))
    assert out[4][0] == pytest.approx(out[1][0], rel=1e-6)
    for a, b in zip(jax.tree.leaves(out[4][1]), jax.tree.leaves(out[1][1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # the masks are uneven, so a mean of per-micro-batch means would differ: the test can tell
    per_micro = [rows["mask"][i:i + 4].sum() for i in range(0, 16, 4)]
    assert max(per_micro) - min(per_micro) > 5


def test_clip_by_global_norm_equals_optax(tr):
    """train.clip_by_global_norm (a scalar factor) == optax.clip_by_global_norm (a per-element select): the
    same empty state, exactly equal below the limit, equal to rounding above it, and zero stays zero."""
    import jax
    import jax.numpy as jnp
    import optax
    grads = {"a": jnp.asarray([[3.0, -4.0]]), "b": jnp.asarray([12.0])}  # global norm 13
    for max_norm in (20.0, 13.0, 5.0, 0.5):
        ours, theirs = tr.clip_by_global_norm(max_norm), optax.clip_by_global_norm(max_norm)
        assert ours.init(grads) == theirs.init(grads) == optax.EmptyState()
        clipped = ours.update(grads, ours.init(grads))[0]
        for a, b in zip(jax.tree.leaves(clipped), jax.tree.leaves(theirs.update(grads, theirs.init(grads))[0])):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)
            if max_norm > 13:
                np.testing.assert_array_equal(a, b)
        assert float(optax.tree.norm(clipped)) == pytest.approx(min(13.0, max_norm), rel=1e-6)
    zero = jax.tree.map(jnp.zeros_like, grads)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(tr.clip_by_global_norm(1.0).update(zero, None)[0]))


def test_first_20_losses_equal_transformers(tr):
    """Same init (mapped to HF layout), batches, warmup+cosine, clipping, no-decay mask: torch AdamW."""
    import jax
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg, mcfg, mesh, optimizer, step, params = setup(tr, "--lr=3e-3", "--warmup_steps=5", "--clip=0.5",
                                                     "--weight_decay=0.1")
    c = mcfg
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, max_position_embeddings=c.max_seq_len,
        rms_norm_eps=c.rms_norm_eps, tie_word_embeddings=False, attn_implementation="eager")).float()
    p = jax.tree.map(np.asarray, params)
    D, L = c.d_model, p["layers"]
    sd = {"model.embed_tokens.weight": p["embed"], "model.norm.weight": p["final_norm"],
          "lm_head.weight": p["lm_head"].T}
    for i in range(c.n_layers):
        pre = f"model.layers.{i}."
        sd |= {pre + "self_attn.q_proj.weight": L["wq"][i].reshape(D, -1).T,
               pre + "self_attn.k_proj.weight": L["wk"][i].reshape(D, -1).T,
               pre + "self_attn.v_proj.weight": L["wv"][i].reshape(D, -1).T,
               pre + "self_attn.o_proj.weight": L["wo"][i].reshape(-1, D).T,
               pre + "mlp.gate_proj.weight": L["w_gate"][i].T, pre + "mlp.up_proj.weight": L["w_up"][i].T,
               pre + "mlp.down_proj.weight": L["w_down"][i].T,
               pre + "input_layernorm.weight": L["attn_norm"][i],
               pre + "post_attention_layernorm.weight": L["mlp_norm"][i]}
    hf.load_state_dict({k: torch.tensor(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=True)
    named = list(hf.named_parameters())
    opt = torch.optim.AdamW([{"params": [w for n, w in named if "norm" not in n], "weight_decay": cfg.weight_decay},
                             {"params": [w for n, w in named if "norm" in n], "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    schedule = tr.lr_schedule(cfg, tr.max_steps(cfg))

    state = {"params": params, "opt": optimizer.init(params)}
    ours, theirs = [], []
    for s in range(20):
        rows = train_worker.fake_rows(0, s + 1, range(16), 32)
        state, m = step(state, tr.global_batch(rows, mesh, 1))
        ours.append(float(m["loss"]))
        logits = hf(torch.tensor(rows["inputs"], dtype=torch.long)).logits
        targets = torch.tensor(rows["targets"], dtype=torch.long).flatten()
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets, reduction="none")
        mask = torch.tensor(rows["mask"]).flatten()
        loss = (ce * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), cfg.clip)
        for g in opt.param_groups:
            g["lr"] = float(schedule(s))
        opt.step()
        theirs.append(loss.item())
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    assert ours[-1] < ours[0] - 0.1  # training moved: the comparison is not of 20 initial losses


@pytest.mark.parametrize("lr", [1e30, 1e39])  # 1e39 overflows fp32: the first update already makes weights inf
def test_nan_loss_stops_with_checkpoint_intact(tr, tmp_path, capsys, lr):
    out = tmp_path / "nan"
    args = [*train_worker.TINY, "--batch_size=8", "--seq_len=16", "--max_steps=10", "--warmup_steps=1",
            "--ckpt_interval=1", "--log_interval=1", "--eval_interval=100", f"--out_dir={out}", f"--lr={lr}"]
    with pytest.raises(SystemExit) as e:
        tr.main(args)
    assert str(e.value).startswith("error: ") and any(w in str(e.value) for w in ("nan", "inf", "not finite"))
    from safetensors.numpy import load_file
    last = checkpoints.latest_checkpoint(str(out))
    if lr > 3.4e38:  # inf in fp32: the very first update is not finite, and nothing may be saved
        assert last is None and "No checkpoint was saved" in str(e.value)
        assert not (out / checkpoints.WEIGHTS_FILE).exists()
        return
    assert last is not None and last in str(e.value)  # the error names the checkpoint a rerun resumes from
    # Every array saved is finite: weights and AdamW state of the checkpoint, and out_dir's model. (The loss is
    # read before the update, so a finite loss once let an update to inf weights be saved.)
    saved = [*load_file(str(Path(last) / "params.safetensors")).values(),
             *load_file(str(Path(last) / "opt.safetensors")).values(),
             *checkpoints.flatten(checkpoints.load_model(str(out))[0]).values()]
    assert all(np.isfinite(a).all() for a in saved if a.dtype.kind == "f")
    with open(Path(last) / "state.json") as f:
        assert json.load(f)["step"] < 10


def test_the_last_line_names_the_model_and_the_next_command(tr, tmp_path, capsys):
    out = tmp_path / "sft"
    args = [*train_worker.TINY, "--batch_size=8", "--seq_len=16", "--max_steps=2", "--warmup_steps=1",
            "--eval_interval=100", f"--out_dir={out}", "--mixture=[{'path': 'stdlib_sft', 'weight': 1.0}]"]
    want = (f'done: model in {out}; next: python sample.py --ckpt {out} --chat --prompt "Return the n-th Fibonacci '
            f'number.", or python convert.py --ckpt {out} --out hf/sft')  # SFT data: a chat prompt
    for _ in range(2):  # the run, then the same command again, which finds it finished
        tr.main(args)
        assert capsys.readouterr().out.splitlines()[-1] == want


# ----------------------------------------------------------------------------- stage files and config

CARD = {  # the model card (Beebey/smallcoder-303m): token budget, (hub id, config or data_dir, weight) per source
    "s1": (6.3e9, [("HuggingFaceFW/fineweb-edu", "sample-10BT", 1.0)]),
    "s2": (7.5e9, [("nvidia/Nemotron-Pretraining-Code-v1", "Synthetic-Code", 0.60),
                   ("bigcode/starcoderdata", "python", 0.40)]),
    "s3": (10e9, [("nvidia/Nemotron-CC-Math-v1", "4plus", 0.40), ("HuggingFaceFW/finewiki", "en", 0.35),
                  ("nvidia/Nemotron-CC-Math-v1", "3", 0.15), ("open-web-math/open-web-math", None, 0.10)]),
    "s4": (6e9, [("nvidia/Nemotron-Pretraining-SFT-v1", "Nemotron-SFT-Code", 0.45),
                 ("nvidia/OpenCodeInstruct", None, 0.30), ("nvidia/OpenMathInstruct-2", None, 0.15),
                 ("nvidia/Nemotron-Pretraining-SFT-v1", "Nemotron-SFT-General", 0.10)]),
}


@pytest.mark.parametrize("stage", ["s1", "s2", "s3", "s4", "tiny", "tiny_sft"])
def test_stage_files_resolve(tr, stage, capsys):
    path = str(TESTS.parent / "stages" / f"{stage}.py")
    tr.main([path, "--dry_run"])
    printed = capsys.readouterr().out
    assert "steps x" in printed and "FLOPs" in printed and "estimate" in printed
    cfg = tr.load_run_config([path])
    from sources import parse_source
    for src in cfg.mixture:
        parse_source(src)  # every source dict is one data.py accepts
    if stage in CARD:
        tokens, sources = CARD[stage]
        assert cfg.tokens == tokens and cfg.seq_len == 1024 and cfg.model == "smallcoder"
        assert cfg.tokenizer == "bigcode/starcoder"
        assert [(s["path"], s.get("name") or s.get("data_dir"), s["weight"]) for s in cfg.mixture] == sources
        previous = {"s2": "out/s1", "s3": "out/s2", "s4": "out/s3"}.get(stage, "")
        assert cfg.init_from == previous and cfg.out_dir == f"out/{stage}"


def test_config_errors(tr, capsys, no_plugins):  # (as on a machine without gcsfs and s3fs)
    with pytest.raises(cli.UsageError, match="did you mean batch_size"):
        tr.load_run_config(["--batch_sise=8"])
    with pytest.raises(cli.UsageError, match="lr must be float"):
        tr.load_run_config(["--lr='fast'"])
    with pytest.raises(cli.UsageError, match="steps must be int"):
        tr.load_run_config(["--max_steps=1.5"])
    cfg = tr.load_run_config(["--max_steps=3", "--lr=1", "--dry_run", "--model_overrides={'n_layers': 2}"])
    assert cfg.lr == 1.0 and cfg.dry_run is True and cfg.model_overrides == {"n_layers": 2}
    assert dataclasses.asdict(cfg)["max_steps"] == 3
    for bad, message in [("--grad_accum=0", "grad_accum must be >= 1, not 0"),
                         ("--log_interval=0", "log_interval must be >= 1, not 0"),
                         ("--max_steps=-3", "max_steps must be >= 0, not -3"),
                         ("--lr=-1", "lr must be positive and finite, not -1.0"),
                         ("--lr=inf", "lr must be positive and finite, not inf"),
                         ("--clip=nan", "clip must be positive and finite, not nan"),
                         ("--beta2=1", "beta2 must be in \\[0, 1\\), not 1.0"),
                         ("--min_lr_ratio=2", "min_lr_ratio must be in \\[0, 1\\]"),
                         ("--fsdp=0", "fsdp must be >= 1 or -1"),
                         ("--out_dir=gs://bucket/run", "out_dir: gs://bucket/run: .*install gcsfs"),
                         ("--init_from=s3://b/s1", "init_from: s3://b/s1: Install s3fs"),
                         ("--out_dir=foo://b/run", "out_dir: foo://b/run: unsupported URL")]:
        with pytest.raises(tr.ConfigError, match=message):
            tr.load_run_config(["--max_steps=3", bad])
    with pytest.raises(SystemExit) as e:
        tr.main(["--warmup=3"])
    assert e.value.code == 2 and "error: unknown key 'warmup'; did you mean warmup_steps" in capsys.readouterr().err
    for seq_len in ("65", "100000"):  # train_worker.TINY's context is 64 (issue 30, case 5)
        with pytest.raises(SystemExit) as e:
            tr.main([*train_worker.TINY, "--max_steps=1", "--dry_run", f"--seq_len={seq_len}"])
        assert e.value.code == 2 and capsys.readouterr().err == (
            f"error: seq_len {seq_len} is longer than the model's context, max_seq_len 64\n")
