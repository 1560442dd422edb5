"""The house's rules, checked on the source: every file short, model.py the math without file I/O, imports one
way (the table below is README's "imports go one way"), each idea written once, no test module importing another.
"""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Each room and the project modules it may import (at the top or inside a function). The low rooms import
# nothing from the project; the table is ordered so that every room imports only rooms above it.
ALLOWED = {
    "storage": set(),
    "cli": set(),
    "sandbox": set(),
    "model": set(),
    "profiling": set(),
    "fast": {"model"},
    "corpus": {"storage"},
    "tokenizer": {"storage", "corpus"},
    "benchmarks": {"cli"},
    "decontam": {"cli", "benchmarks"},
    "checkpoints": {"model", "storage", "tokenizer"},
    "sources": {"storage", "corpus", "tokenizer", "decontam"},
    "token_cache": {"storage", "cli", "tokenizer", "decontam", "sources"},
    "card": {"model", "storage", "cli", "benchmarks", "checkpoints", "sources"},  # sources: which mixture paths are hub datasets
    "data": {"storage", "cli", "corpus", "tokenizer", "decontam", "sources", "token_cache"},
    "train": {"model", "fast", "storage", "cli", "tokenizer", "checkpoints", "data"},
    "convert": {"model", "storage", "cli", "tokenizer", "checkpoints", "card"},
    "sample": {"fast", "storage", "cli", "tokenizer", "checkpoints", "convert"},  # convert: a Hugging Face directory
    "eval_code": {"storage", "cli", "sandbox", "benchmarks", "tokenizer", "fast", "sample"},
    "bench": {"model", "fast", "cli", "benchmarks", "train", "convert", "sample", "profiling"},
}


def project_imports(path: Path) -> set[str]:
    """The project modules a file imports, wherever the import statement is."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(ALLOWED)


def test_every_room_imports_only_the_rooms_below_it():
    rooms = sorted(p.stem for p in ROOT.glob("*.py"))
    assert rooms == sorted(ALLOWED), "a new file needs a row in ALLOWED (and in README's layout table)"
    order = list(ALLOWED)
    for room, allowed in ALLOWED.items():
        assert all(order.index(a) < order.index(room) for a in allowed), f"{room}: the table itself has a cycle"
        got = project_imports(ROOT / f"{room}.py")
        assert got <= allowed, f"{room}.py imports {sorted(got - allowed)}"
    for low in ("storage", "cli", "sandbox", "model", "profiling"):
        assert project_imports(ROOT / f"{low}.py") == set()


def test_files_are_short_and_model_py_is_the_math():
    for path in [*ROOT.glob("*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("docs/*.py")]:
        lines = len(path.read_text().splitlines())
        assert lines <= 500, f"{path.name} has {lines} lines"
    source = (ROOT / "model.py").read_text()
    assert len(source.splitlines()) <= 340, f"model.py has {len(source.splitlines())} lines"
    imported = {a.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import) for a in node.names}
    assert not imported & {"os", "json", "pathlib", "shutil", "safetensors", "io"}, "model.py reads no files"
    assert "open(" not in source


def test_each_idea_is_written_once():
    sources = {p.name: p.read_text() for p in ROOT.glob("*.py")}

    def where(pattern):
        return sorted(name for name, text in sources.items() if re.search(pattern, text, re.M))
    assert where(r"os\.replace\(|os\.rename\(") == ["storage.py"]  # the one atomic file and directory write
    # the one flag dialect; model.py, which imports nothing from the project, has one flag with one spelling
    assert where(r"(?<!cli)\.parse_args\(") == ["cli.py", "model.py"]
    assert where(r"^DTYPES = ") == ["cli.py"]
    assert where(r'[fr]"step_|glob.*step_') == ["checkpoints.py"]  # the one reader of a run's step directories
    assert where(r"fsspec\.") == ["storage.py"]


def test_no_test_module_imports_another():
    tests = {p.stem for p in (ROOT / "tests").glob("test_*.py")}
    for path in (ROOT / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            assert not set(names) & tests, f"{path.name} imports {set(names) & tests}"
