"""The README cannot go stale: its Layout block lists exactly the files of vljepa/ (and names every
eval/ script and configs/ group), its Quick start holds the two commands CI runs, and its links
point at headings and files that exist.

The Layout block's format (README.md, "## Layout"), one entry per line:

    NAME                  description            an entry: NAME at 2 x depth spaces of indentation,
      NAME/               description            a folder when NAME ends with "/", then its entries
                          more description       a continuation: 10 or more spaces, no entry
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONTINUATION = 10  # a line indented this much or more continues the entry above it
SCRIPT = r"\b[a-z0-9_]+\.py\b"  # a script's file name in the eval/ entry ("NAME.py" is a placeholder)
QUICK_START = ['pip install torch==2.14.1 torchvision==0.29.1 -e ".[dev]" && python train.py',
               "pytest"]


@dataclass
class Entry:
    path: str  # relative to the repository root, without a trailing "/"
    folder: bool
    text: str  # the description, continuation lines included


def _section(text: str, title: str) -> str:
    """The body of the "## title" section, up to the next "## " heading."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"README has no '## {title}' section"
    return m.group(1)


def _fenced(section: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block in ``section``."""
    return re.findall(r"^```(\w*)\n(.*?)^```", section, re.M | re.S)


def layout_entries(readme: str) -> list[Entry]:
    """The entries of the Layout section's code block, paths rebuilt from the indentation."""
    blocks = [body for lang, body in _fenced(_section(readme, "Layout")) if not lang]
    assert len(blocks) == 1, "the Layout section holds one plain fenced block"
    entries: list[Entry] = []
    folders: list[str] = []  # the open folder at each depth
    for line in blocks[0].splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent >= CONTINUATION:
            assert entries, f"a continuation line before any entry: {line!r}"
            entries[-1].text += " " + line.strip()
            continue
        assert indent % 2 == 0, f"entries are indented by two spaces per level: {line!r}"
        depth = indent // 2
        assert depth <= len(folders), f"indented deeper than its folder: {line!r}"
        name, _, text = line.strip().partition(" ")
        del folders[depth:]
        entries.append(Entry("/".join(folders + [name.rstrip("/")]), name.endswith("/"),
                             text.strip()))
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
    return entries


def tree_files(root: Path, folder: str) -> set[str]:
    """Files under ``root/folder`` that git tracks or would track (untracked, not ignored), as
    paths relative to ``root``; those deleted from the work tree are left out."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", folder],
                         cwd=root, capture_output=True, text=True, check=True).stdout
    return {p for p in out.splitlines() if (root / p).is_file()}


def _git_available() -> bool:
    return shutil.which("git") is not None and (ROOT / ".git").exists()


def documented(path: str) -> bool:
    """The library files the Layout lists: every Python file and the C++ kernel sources."""
    return path.endswith(".py") or path.endswith(".cpp")


def layout_mismatch(entries: list[Entry], files: set[str], folder: str = "vljepa") -> dict:
    """What the Layout lists under ``folder`` but the tree lacks, and the reverse."""
    listed = {e.path for e in entries if not e.folder and e.path.startswith(folder + "/")}
    present = {f for f in files if documented(f) and f.startswith(folder + "/")}
    return {"listed, not in the tree": sorted(listed - present),
            "in the tree, not listed": sorted(present - listed)}


def eval_mismatch(entries: list[Entry], files: set[str]) -> dict:
    """eval/ scripts the Layout's eval/ entry names but the tree lacks, and the reverse."""
    [entry] = [e for e in entries if e.path == "eval"]
    named = set(re.findall(SCRIPT, entry.text))
    scripts = {Path(f).name for f in files
               if Path(f).parent.as_posix() == "eval" and f.endswith(".py")} - {"__init__.py"}
    return {"named, not in the tree": sorted(named - scripts),
            "in the tree, not named": sorted(scripts - named)}


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def entries(readme) -> list[Entry]:
    return layout_entries(readme)


@pytest.mark.skipif(not _git_available(), reason="needs git and a checkout")
def test_layout_lists_every_library_file(entries):
    mismatch = layout_mismatch(entries, tree_files(ROOT, "vljepa"))
    assert mismatch == {"listed, not in the tree": [], "in the tree, not listed": []}, (
        f"README.md's Layout is stale: {mismatch}")


@pytest.mark.skipif(not _git_available(), reason="needs git and a checkout")
def test_layout_names_every_eval_script(entries):
    mismatch = eval_mismatch(entries, tree_files(ROOT, "eval"))
    assert mismatch == {"named, not in the tree": [], "in the tree, not named": []}, (
        f"README.md's Layout eval/ entry is stale: {mismatch}")


def test_layout_top_level_entries_exist_and_name_every_config_group(entries):
    top = [e for e in entries if "/" not in e.path]
    assert {"train.py", "configs", "eval", "tests", "checkpoints", "vljepa"} <= {e.path for e in top}
    for e in top:
        assert (ROOT / e.path).exists() or e.path == "checkpoints", e.path  # run outputs: git-ignored
        assert e.text, f"{e.path} has no description"
    [configs] = [e for e in top if e.path == "configs"]
    groups = {p.name for p in (ROOT / "configs").iterdir() if p.is_dir()}
    assert {g for g in groups if f"{g}/" not in configs.text} == set()
    assert all(e.text for e in entries if not e.folder), "every file has a description"


def test_the_check_fails_when_a_file_is_added_or_removed(entries):
    # the listing itself, as the tree: no mismatch
    files = {e.path for e in entries if not e.folder}
    clean = {"listed, not in the tree": [], "in the tree, not listed": []}
    assert layout_mismatch(entries, files) == clean
    # a new module, or a new kernel source, that the README does not list
    for new in ("vljepa/predictors/new_kind.py", "vljepa/kernels/csrc/other.cpp"):
        assert layout_mismatch(entries, files | {new})["in the tree, not listed"] == [new]
    assert layout_mismatch(entries, files | {"vljepa/data/notes.txt"}) == clean  # not a code file
    # a module removed (or renamed) while the README still lists it
    gone = "vljepa/encoders/x_encoder.py"
    assert layout_mismatch(entries, files - {gone})["listed, not in the tree"] == [gone]
    # a new eval script that the eval/ entry does not name, and a named one removed
    evals = {f"eval/{n}" for e in entries if e.path == "eval"
             for n in re.findall(SCRIPT, e.text)}
    assert eval_mismatch(entries, evals | {"eval/new_bench.py"})["in the tree, not named"] == [
        "new_bench.py"]
    assert eval_mismatch(entries, evals - {"eval/vqa.py"})["named, not in the tree"] == ["vqa.py"]


def test_the_parse_rebuilds_paths_from_indentation():
    text = ("## Layout\n\nintro\n\n```\n"
            "train.py              entry point\n"
            "vljepa/               the library\n"
            "  predictors/\n"
            "    base.py           the contract,\n"
            "                      continued\n"
            "  kernels/\n"
            "    csrc/\n"
            "      ternary_gemm.cpp  the kernel\n"
            "  model.py            the network\n"
            "eval/                 scripts: a.py, b.py\n"
            "```\n")
    got = [(e.path, e.folder, e.text) for e in layout_entries(text)]
    assert got == [("train.py", False, "entry point"), ("vljepa", True, "the library"),
                   ("vljepa/predictors", True, ""),
                   ("vljepa/predictors/base.py", False, "the contract, continued"),
                   ("vljepa/kernels", True, ""), ("vljepa/kernels/csrc", True, ""),
                   ("vljepa/kernels/csrc/ternary_gemm.cpp", False, "the kernel"),
                   ("vljepa/model.py", False, "the network"),
                   ("eval", True, "scripts: a.py, b.py")]
    with pytest.raises(AssertionError, match="deeper than its folder"):
        layout_entries(text.replace("  predictors/\n", ""))


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_tree_files_sees_untracked_files_and_skips_ignored_and_deleted(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / ".gitignore").write_text("__pycache__/\n")
    (tmp_path / "vljepa" / "__pycache__").mkdir(parents=True)
    for name in ("vljepa/tracked.py", "vljepa/deleted.py", "vljepa/__pycache__/tracked.pyc"):
        (tmp_path / name).write_text("")
    git("add", "vljepa/tracked.py", "vljepa/deleted.py")
    (tmp_path / "vljepa" / "deleted.py").unlink()
    (tmp_path / "vljepa" / "untracked.py").write_text("")
    assert tree_files(tmp_path, "vljepa") == {"vljepa/tracked.py", "vljepa/untracked.py"}


def test_quick_start_is_the_two_commands_ci_runs(readme):
    blocks = [body for lang, body in _fenced(_section(readme, "Quick start")) if lang == "bash"]
    assert [b.splitlines() for b in blocks] == [QUICK_START], "Quick start: exactly two commands"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert QUICK_START[0] in ci, ".ci/run must run README command 1 verbatim"
    assert any(line.split("||")[0].strip() == QUICK_START[1] for line in ci), (
        ".ci/run must run README command 2 (bare pytest)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_point_at_headings_and_files_that_exist(readme):
    prose = re.sub(r"^```.*?^```", "", readme, flags=re.M | re.S)
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", prose, re.M)}
    targets = re.findall(r"\]\(([^)\s]+)\)", prose)
    assert targets
    for target in targets:
        if target.startswith(("http://", "https://")):
            continue
        if target.startswith("#"):
            assert target[1:] in anchors, f"no heading for the link {target}"
        else:
            assert (ROOT / target).exists(), f"the link {target} names no file"


def test_results_rows_name_an_existing_command(readme):
    rows = [r for r in _section(readme, "Results").splitlines()
            if r.startswith("|") and not r.startswith("|---")][1:]  # below the header
    assert 0 < len(rows) <= 10
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 3 and all(cells), row
        command = re.search(r"`((?:python|pytest|vljepa)[^`]*)`", cells[2])
        assert command, f"no command in {cells[2]!r}"
        for script in re.findall(r"\b(eval/\w+\.py)\b", command.group(1)):
            assert (ROOT / script).is_file(), script
