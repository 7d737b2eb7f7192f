"""Docs that cannot rot: every repository path, config key, command-line flag and relative link
named in README.md and docs/*.md exists, and every Python snippet in them runs.

The checks are functions of a page's text, so the test of the checks (``test_the_checks_catch
_a_renamed_...``) can feed them a copy with one name changed and see them fail."""
import functools
import glob
import itertools
import os
import re
import shutil
import subprocess
import sys

import pytest
from engine_helpers import REPO, train_tiny

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# Paths the docs name that a run creates (not in a fresh clone).
GENERATED = ("datasets/dataseg_synthetic", "output/", "pretrained/", "mutants/")
# Top-level entries whose paths are checked.
ROOTS = ("dataseg", "configs", "tools", "demo", "tests", "benchmarks", "scripts", "requirements",
         "docs", "datasets", ".ci")
TOP_FILES = ("train_net.py", "setup.py", "pyproject.toml", "README.md", "LICENSE")
# Flags of programs that are not this project's (named in the docs' commands and prose).
EXTERNAL_FLAGS = {
    "--nnodes", "--nproc-per-node", "--nproc_per_node", "--node-rank", "--rdzv-backend",
    "--rdzv-endpoint", "--rdzv-id", "--max-restarts", "--max-children", "--survivors",
    "--isolated", "--no-deps", "--dry-run", "--report", "--require-hashes", "-m",
    "--standalone", "--rdzv-conf", "--ntasks-per-node", "--signal", "--requeue",
}
CONFIG_ROOTS = ("MODEL", "DATASETS", "INPUT", "SOLVER", "DATALOADER", "TEST")


# --------------------------------------------------------------------------- text parsing
def fenced_blocks(text):
    """[(language, first line number, body)] of the page's ``` blocks."""
    out, lang, start, body = [], None, 0, []
    for i, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip() or "text", i + 1, []
            else:
                out.append((lang, start, "\n".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    return out


def prose(text):
    """The page without its fenced blocks (line numbers kept)."""
    keep, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
            keep.append("")
        else:
            keep.append("" if inside else line)
    return "\n".join(keep)


def code_fragments(text):
    """[(line number, code)]: every inline `code` span and every line of a shell or YAML block
    (backslash continuations joined)."""
    frags = []
    for i, line in enumerate(prose(text).splitlines(), 1):
        frags += [(i, m) for m in re.findall(r"`([^`\n]+)`", line)]
    for lang, start, body in fenced_blocks(text):
        if lang in ("python", "json", "text", "bibtex"):
            continue
        joined = body.replace("\\\n", " ")
        for k, line in enumerate(joined.splitlines()):
            frags.append((start + k, line))
    return frags


def _expand_braces(s):
    m = re.search(r"\{([^{}]*,[^{}]*)\}", s)
    if not m:
        return [s]
    return [x for alt in m.group(1).split(",")
            for x in _expand_braces(s[:m.start()] + alt.strip() + s[m.end():])]


_ROOTS_RX = "|".join(re.escape(r) for r in ROOTS)
_TOP_RX = "|".join(re.escape(f) for f in TOP_FILES)
PATH_RX = re.compile(rf"(?<![\w./$~-])((?:{_ROOTS_RX})/[\w./{{}},*-]*|(?:{_TOP_RX})(?![\w./-]))")


def missing_paths(text, root=REPO):
    """[(line, path)] named in code that do not exist under ``root``."""
    bad = []
    for line, frag in code_fragments(text):
        for m in PATH_RX.finditer(frag):
            path = m.group(1).rstrip(".,:")
            if "<" in path or any(path.startswith(g) for g in GENERATED) or "..." in path:
                continue
            for p in _expand_braces(path):
                if "*" in p:
                    ok = bool(glob.glob(str(root / p)))
                else:
                    ok = (root / p).exists()
                if not ok:
                    bad.append((line, p))
    return bad


@functools.cache
def _config_tree():
    from detectron2.config import get_cfg

    from dataseg.config import add_dataseg_config

    cfg = get_cfg()
    add_dataseg_config(cfg)
    return cfg


KEY_RX = re.compile(rf"(?<![\w.])((?:{'|'.join(CONFIG_ROOTS)})(?:\.[A-Z][A-Z0-9_]*)+)(\.\*)?")


def _has_key(key):
    node = _config_tree()
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


def unknown_keys(text):
    """[(line, key)] of config keys named anywhere on the page that the config lacks. The
    docs' shorthand ``TEST.TASK`` for ``MODEL.DATASEG.TEST.TASK`` resolves under MODEL.DATASEG."""
    bad = []
    for i, line in enumerate(text.splitlines(), 1):
        for m in KEY_RX.finditer(line):
            key = m.group(1)
            if not any(_has_key(k) for k in (key, "MODEL.DATASEG." + key)):
                bad.append((i, key))
    return bad


def cli_of(token):
    """The project command a token names (a script path or ``-m module``), or None."""
    if token.startswith("-m "):
        mod = token[3:]
        return token if mod.split(".")[0] == "dataseg" else None
    if token in TOP_FILES or (token.split("/")[0] in ROOTS and token.endswith(".py")):
        return token if (REPO / token).is_file() else None
    return None


CMD_RX = re.compile(r"(-m [\w.]+|[\w./-]+\.py)((?:\s+[^\s|;&#>]+)*)")


def flags_named(text):
    """[(line, command or None, flag)]: flags after a project command, and bare `--flag`
    spans of the prose (command None)."""
    out = []
    for line, frag in code_fragments(text):
        for m in CMD_RX.finditer(frag):
            cli = cli_of(m.group(1).strip())
            if cli is None:
                continue
            for tok in m.group(2).split():
                if re.fullmatch(r"--[a-z][\w-]*(=.*)?", tok):
                    out.append((line, cli, tok.split("=")[0]))
    for i, line in enumerate(prose(text).splitlines(), 1):
        for span in re.findall(r"`(--[a-z][\w-]*)[^`]*`", line):
            out.append((i, None, span))
    return out


@functools.cache
def help_text(cli):
    """What ``python <cli> --help`` prints (run from the repository root)."""
    args = cli.split() if cli.startswith("-m ") else [cli]
    r = subprocess.run([sys.executable, *args, "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    return r.stdout + r.stderr


def all_clis():
    scripts = ["train_net.py", *[str(p.relative_to(REPO)) for d in
                                 ("demo", "tools", "benchmarks", "datasets", "scripts")
                                 for p in sorted((REPO / d).glob("*.py"))
                                 if "def main" in p.read_text() or "argparse" in p.read_text()]]
    return scripts + ["-m dataseg.text", "-m dataseg.data.synthetic"]


@functools.cache
def _detectron2_flags():
    from detectron2.engine import default_argument_parser

    return {s for a in default_argument_parser()._actions for s in a.option_strings}


@functools.cache
def _source_flags(cli):
    """Flags a command defines in its own file (string literals "--x"), plus Detectron2's
    default ones where it builds on ``default_argument_parser``. A cheap first look; a flag
    not found here is looked up in the command's ``--help``."""
    if cli.startswith("-m "):
        base = REPO / cli[3:].replace(".", "/")
        path = base / "__main__.py" if base.is_dir() else base.with_suffix(".py")
    else:
        path = REPO / cli
    src = path.read_text() if path.is_file() else ""
    flags = set(re.findall(r"""["'](--[a-z][\w-]*)["']""", src))
    if "default_argument_parser" in src:
        flags |= _detectron2_flags()
    return flags


def _accepts(cli, flag):
    return flag in _source_flags(cli) or bool(
        re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text(cli)))


def unknown_flags(text, clis=None):
    bad = []
    for line, cli, flag in flags_named(text):
        if flag in EXTERNAL_FLAGS:
            continue
        if cli is not None:
            if not _accepts(cli, flag):
                bad.append((line, f"{cli} {flag}"))
        else:
            clis_ = clis or all_clis()
            if not (any(flag in _source_flags(c) for c in clis_)
                    or any(_accepts(c, flag) for c in clis_)):
                bad.append((line, flag))
    return bad


def _slug(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(path):
    text = path.read_text()
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", prose(text), re.M)}


def broken_links(text, page):
    """[(line, target)] of relative links and images that do not resolve (files and anchors)."""
    bad = []
    for i, line in enumerate(prose(text).splitlines(), 1):
        for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", line):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                bad.append((i, target))
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append((i, target))
    return bad


# ------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_named_paths_exist(page):
    assert missing_paths(page.read_text()) == [], page.name


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_named_config_keys_exist(page):
    assert unknown_keys(page.read_text()) == [], page.name


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    assert broken_links(page.read_text(), page) == [], page.name


def test_named_flags_exist():
    bad = {p.name: unknown_flags(p.read_text()) for p in DOCS}
    assert {k: v for k, v in bad.items() if v} == {}


def test_readme_is_short_and_links_every_docs_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for page in (REPO / "docs").glob("*.md"):
        assert f"](docs/{page.name})" in readme, page.name


def test_the_checks_catch_a_renamed_path_key_flag_and_link():
    """Each check fails on a copy of a page with one name changed (what a rename leaves)."""
    page = REPO / "docs" / "GETTING_STARTED.md"
    text = page.read_text()
    assert "configs/dataseg_r50.yaml" in text and "MODEL.DATASEG.TEST" in text
    assert "--eval-only" in text and "](INSTALL.md)" in text
    assert missing_paths(text.replace("configs/dataseg_r50.yaml", "configs/dataseg_r51.yaml"))
    assert unknown_keys(text.replace("MODEL.DATASEG.TEST", "MODEL.DATASEG.TESTS"))
    assert unknown_flags(text.replace("--eval-only", "--evaluate-only"), clis=["train_net.py"])
    assert broken_links(text.replace("](INSTALL.md)", "](INSTAL.md)"), page)
    assert broken_links(text.replace("](DATASETS.md#vocabulary-syntax)",
                                     "](DATASETS.md#vocabulary-grammar)"), page)


# ------------------------------------------------------------------ the Python snippets
def _snippets(page):
    return [(line, body) for lang, line, body in fenced_blocks(page.read_text())
            if lang == "python"]


PAGES_WITH_SNIPPETS = [p for p in DOCS if _snippets(p)]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder laid out like the repository for the snippets: a tiny model trained by
    Detectron2's trainer as ``output/quickstart/model_final.pth``, its config as
    ``configs/quickstart.yaml``, and ``image.jpg`` (a synthetic validation image)."""
    from detectron2.data import DatasetCatalog

    tmp = tmp_path_factory.mktemp("docs_snippets")
    cfg = train_tiny(tmp, tmp / "output" / "quickstart", max_iter=2)
    (tmp / "configs").mkdir()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""
    (tmp / "configs" / "quickstart.yaml").write_text(cfg.dump())
    shutil.copy(DatasetCatalog.get("synth_pan_val")[0]["file_name"], tmp / "image.jpg")
    return tmp


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_SNIPPETS, ids=lambda p: p.name)
def test_python_snippets_run(page, scratch):
    """A page's snippets run in order (later ones use earlier names), as written, in a new
    Python process started in the scratch folder: what a reader pasting them gets."""
    parts = [f"# --- {page.name}, line {line}\n{body}\n" for line, body in _snippets(page)]
    script = scratch / f"snippets_{page.stem}.py"
    script.write_text("\n".join(parts))
    env = {**os.environ, "PYTHONPATH": str(REPO), "DATASEG_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, script.name], cwd=scratch, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"{page.name}: snippets failed:\n{r.stderr[-3000:]}"


def test_every_page_with_code_is_covered():
    """Nothing escapes: the snippet test covers every page with a Python block."""
    names = {p.name for p in PAGES_WITH_SNIPPETS}
    assert {"GETTING_STARTED.md", "INFERENCE.md", "DATASETS.md"} <= names
    assert all(len(list(itertools.chain(_snippets(p)))) >= 1 for p in PAGES_WITH_SNIPPETS)
