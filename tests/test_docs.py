"""Docs that cannot drift (torch-free).

- docs/config.md is what scripts/config_reference.py writes from conf/ and the schemas.
- Every fenced block of README.md, CONTRIBUTING.md and docs/*.md is labelled: ```bash holds
  commands, ```console a transcript (its `$ ` lines are commands), ```text output; ```python and
  ```yaml are code shown, not run.
- Each `attnexp …` command is composed in-process (attnexp.api.compose_config: the schemas and the
  torch-free rules); a `-m` command's sweep is expanded as attnexp plans it, every distinct job
  but for its seed composed, the seeds only parsed. A path placeholder (`<...>`, `RUN/`,
  `/path/to/`) becomes a temporary file. A line ending `# error: <text>` must fail with that text;
  one ending `# not checked: <reason>` is counted and skipped.
- Each `make` target named exists, each `attnexp-report` / `attnexp-bench` flag exists, and each
  config key a prose code span names (`data.download`, `sweep.*`) is a key of some choice of its
  group (or of the root); every relative link reaches its file and heading, every repository path
  named in a code span exists.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("config_reference", REPO / "scripts" / "config_reference.py")
reference = sys.modules.setdefault("config_reference", importlib.util.module_from_spec(_spec))
if not hasattr(reference, "render"):
    _spec.loader.exec_module(reference)

DOCS = sorted(p for p in [REPO / "README.md", REPO / "CONTRIBUTING.md", *(REPO / "docs").glob("*.md")] if p.is_file())
LABELS = {"bash", "console", "text", "python", "yaml"}
MARK = re.compile(r"\s#\s*(error|not checked):\s*(.*?)\s*$")
# a command's value that stands for a path the reader fills in
PLACEHOLDER = re.compile(r"<[^>]*>|…|\.\.\.|^RUN/|^/path/to/|^PATH$")
FILE_SUFFIXES = {"json", "yaml", "yml", "md", "png", "csv", "py", "ckpt", "pth", "pt", "txt", "safetensors", "bin"}
FILE_SUFFIXES |= {"log", "sh", "toml", "gz", "html", "npz", "cfg", "diff", "out", "err"}
PREFIXES = {"nice", "time", "env", "-n", "10", "19"}  # words before the command itself


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def fenced_blocks(path: Path) -> list[tuple[str, int, list[str]]]:
    """(label, line number of the opening fence, the block's lines) of a markdown file."""
    blocks, open_at, label, body = [], None, "", []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fence = re.match(r"\s*```(.*)$", line)
        if fence and open_at is None:
            open_at, label, body = n, fence.group(1).strip(), []
        elif fence and not fence.group(1).strip():
            blocks.append((label, open_at, body))
            open_at = None
        elif open_at is not None:
            body.append(line)
    assert open_at is None, f"{rel(path)}:{open_at}: a fence that never closes"
    return blocks


def commands(path: Path) -> list[tuple[int, str]]:
    """(line, command) of every bash line and console `$ ` line (continuations joined)."""
    out = []
    for label, start, body in fenced_blocks(path):
        if label not in ("bash", "console"):
            continue
        pending = ""
        for i, line in enumerate(body, start + 1):
            text = line.strip()
            if label == "console":
                if not text.startswith("$ ") and not pending:
                    continue
                text = text[2:] if text.startswith("$ ") else text
            if not text or text.startswith("#"):
                continue
            if text.endswith("\\"):
                pending += text[:-1] + " "
                continue
            out.append((i, pending + text))
            pending = ""
    return out


def program(words: list[str]) -> list[str]:
    """The words from the program on: `nice -n 10`, `time`, VAR=value and `.venv/bin/` left out."""
    while words and (words[0] in PREFIXES or re.match(r"^[A-Z_]+=", words[0])):
        words = words[1:]
    if words:  # the shell's expansions a reader's line relies on
        words = [os.path.expandvars(words[0].removeprefix(".venv/bin/")), *map(os.path.expandvars, words[1:])]
    return words


def fill_placeholders(overrides: list[str], tmp: Path) -> list[str]:
    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and PLACEHOLDER.search(value.strip("'\"")):
            name = re.sub(r"[^\w.]", "_", Path(value.strip("'\"")).name)
            suffix = Path(name).suffix if Path(name).suffix[1:] in FILE_SUFFIXES else ""
            target = tmp / f"{len(out)}_placeholder{suffix}"
            if key.lstrip("+~").startswith("hydra.") or not suffix:
                target.mkdir(exist_ok=True)
            else:
                target.write_bytes(b"")
            value = str(target)
        out.append(f"{key}{sep}{value}")
    return out


COMPOSED: set[tuple[str, ...]] = set()  # sweep jobs already composed and valid, in this session


def check_attnexp(args: list[str], tmp: Path, counts: Counter, every_job: bool) -> None:
    """What `attnexp ARGS` would compose before any torch: each job's config, validated (a sweep's
    first job only unless every_job)."""
    from attnexp.api import compose_config
    from attnexp.cli import MULTIRUN
    from attnexp.config.compose import compose
    from attnexp.errors import ConfigError
    from attnexp.sweep import adaptive, plan

    flags, overrides, takes_value = [], [], False
    for word in args:  # as the CLI splits them: flags (with the values --cfg and --package take), overrides
        (flags if takes_value or word.startswith("-") else overrides).append(word)
        takes_value = word in ("--cfg", "-c", "--package", "-p")
    known = MULTIRUN + ("--help", "-h", "--cfg", "-c", "--resolve", "--package", "-p")
    unknown = [
        f for i, f in enumerate(flags) if f not in known and flags[i - 1] not in ("--cfg", "-c", "--package", "-p")
    ]
    if unknown:
        raise ConfigError(unknown[0], ..., "unknown flag")
    overrides = fill_placeholders(overrides, tmp)
    if not any(f in MULTIRUN for f in flags):
        compose_config(overrides)
        counts["attnexp"] += 1
        return
    # the sweep as attnexp.sweep.plan expands it: the command's sweeps, a preset's params, the pilot's seeds
    master = compose(overrides, return_hydra_config=True, mode="MULTIRUN")
    params = master.hydra.sweeper.get("params") or {}
    task = [f"{k}={v}" for k, v in params.items()] + list(master.hydra.overrides.task)
    if master.sweep.seeds:
        task.append(adaptive.pilot_seeds(master.sweep))
    jobs = plan.expand(plan.parse_overrides(task))  # every seed parsed
    distinct = {tuple(o for o in job if plan.override_key(o) != "seed") for job in jobs}
    new = sorted(distinct - COMPOSED)[: None if every_job else 1]  # a job two commands share: once
    for job in new:
        compose_config(list(job))
        COMPOSED.add(job)
    counts["attnexp -m"] += 1
    counts["sweep jobs composed"] += len(new)


def help_flags(main) -> set[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["--help"])
    return set(re.findall(r"(?<![\w-])--?[a-zA-Z][\w-]*", out.getvalue()))


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))


def check_line(words: list[str], tmp: Path, counts: Counter, every_job: bool) -> None:
    name, args = words[0], words[1:]
    if name == "attnexp":
        check_attnexp(args, tmp, counts, every_job)
    elif name == "make":
        targets = [a for a in args if not a.startswith("-") and "=" not in a]
        missing = sorted(set(targets) - make_targets())
        assert not missing, f"no make target {missing[0]}"
        counts["make"] += 1
    elif name in ("attnexp-report", "attnexp-bench"):
        from attnexp.tools import bench, report

        known = help_flags(report.main if name == "attnexp-report" else bench.main)
        used = [a.split("=", 1)[0] for a in args if a.startswith("-")]
        missing = [f for f in used if f not in known]
        assert not missing, f"{name} has no flag {missing[0]}"
        counts[name] += 1
    else:
        counts["other programs (not checked)"] += 1


def run_doc(path: Path, tmp: Path, every_job: bool) -> tuple[Counter, list[str]]:
    counts, problems = Counter(), []
    for n, line in commands(path):
        mark = MARK.search(line)
        where = f"{rel(path)}:{n}: {line}"
        if mark and mark.group(1) == "not checked":
            assert mark.group(2), f"{where}\n  `# not checked:` needs its reason"
            counts["not checked"] += 1
            continue
        words = program(shlex.split(line[: mark.start()] if mark else line, comments=True))
        if not words:
            continue
        try:
            check_line(words, tmp, counts, every_job)
        except Exception as exc:  # the line's own failure, as the user would read it
            if mark and mark.group(1) == "error":
                if mark.group(2) not in str(exc):
                    problems.append(f"{where}\n  fails with `{exc}`, not with `{mark.group(2)}`")
                counts["expected errors"] += 1
            else:
                problems.append(f"{where}\n  {type(exc).__name__}: {exc}")
            continue
        if mark and mark.group(1) == "error":
            problems.append(f"{where}\n  was to fail with `{mark.group(2)}` but passed")
    return counts, problems


# ---------------------------------------------------------------- the tests


def test_config_reference_is_what_the_script_writes():
    page, missing = reference.render()
    assert reference.TARGET.read_text() == page, "docs/config.md is stale: run `make docs`"
    assert f"## Keys without a comment ({len(missing)})" in page


@pytest.mark.parametrize("path", DOCS, ids=rel)
def test_every_fenced_block_is_labelled(path):
    bad = [f"{rel(path)}:{n}: ```{label}" for label, n, _ in fenced_blocks(path) if label not in LABELS]
    assert not bad, "a fenced block needs one of " + ", ".join(sorted(LABELS)) + ":\n" + "\n".join(bad)


def check_docs(tmp: Path, capsys, every_job: bool) -> None:
    start, cpu, total, problems = time.perf_counter(), time.process_time(), Counter(), []
    for path in DOCS:
        counts, found = run_doc(path, tmp, every_job)
        total += counts
        problems += found
    assert not problems, "\n".join(problems)
    with capsys.disabled():
        checked = sum(v for k, v in total.items() if k not in ("not checked", "sweep jobs composed"))
        detail = ", ".join(f"{k} {v}" for k, v in sorted(total.items()))
        print(f"\ndocs commands: {checked} checked, {total['not checked']} skipped ({detail}); "
              f"{time.perf_counter() - start:.1f} s wall, {time.process_time() - cpu:.1f} s CPU")  # fmt: skip


def test_documented_commands_compose(tmp_path, capsys):
    """Every command; a sweep's own config and its first job (every seed parsed)."""
    check_docs(tmp_path, capsys, every_job=False)


@pytest.mark.slow
def test_documented_sweeps_compose_every_job(tmp_path, capsys):
    """Every distinct job of every documented sweep, but for its seed (a minute or more on 2 cores)."""
    check_docs(tmp_path, capsys, every_job=True)


def prose_keys(path: Path) -> list[tuple[int, str]]:
    """(line, key) of each code span outside fenced blocks naming a config key (`root.key`,
    `root.key=value`; `root.*`: the prefix; `+root.key` adds one) whose root is a group or a root key."""
    roots = set(reference.all_keys())
    out, fenced = [], False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if re.match(r"\s*```", line):
            fenced = not fenced
            continue
        if fenced:
            continue
        for span in re.findall(r"`([^`]+)`", line):
            for token in span.split():
                if token.startswith("+"):  # a key added on purpose (`++trainer.accumulate_grad_batches=2`)
                    continue
                key = token.lstrip("~").split("=", 1)[0]
                key = re.split(r"\.(?:\*|<|[A-Z])", key)[0].rstrip(".,;:)")
                parts = key.split(".")
                if len(parts) < 2 or parts[0] not in roots or parts[-1] in FILE_SUFFIXES:
                    continue
                if re.fullmatch(r"[a-z_][\w]*(\.[\w]+)+", key):
                    out.append((n, key))
    return out


def test_config_keys_named_in_prose_exist(capsys):
    keys = reference.all_keys()
    problems, checked = [], 0
    for path in DOCS:
        for n, key in prose_keys(path):
            checked += 1
            known = keys[key.split(".")[0]]
            if not any(k == key or k.startswith(key + ".") for k in known):
                problems.append(f"{rel(path)}:{n}: `{key}` is no key of any {key.split('.')[0]} choice")
    assert not problems, "\n".join(problems)
    with capsys.disabled():
        print(f"\ndocs prose: {checked} config keys checked")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_the_docs_reach_a_file_and_heading():
    problems = []
    for path in DOCS + [REPO / "CHANGELOG.md"]:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"\w+://", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                problems.append(f"{rel(path)}: ({target}): no such file")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.M)
                if anchor not in {slug(h) for h in headings}:
                    problems.append(f"{rel(path)}: ({target}): no such heading in {file or rel(path)}")
    assert not problems, "\n".join(problems)


def test_repository_paths_named_in_the_docs_exist():
    """A code span naming a file or folder of the repository (`attnexp/pack/run.py`, `conf/seqpool/`)
    names one that exists: a moved module fails here, not in a reader's shell."""
    problems, checked = [], 0
    for path in DOCS:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for span in re.findall(r"`([^`\s]+)`", line):
                if not re.fullmatch(r"(attnexp|conf|docs|scripts|tests)/[\w./-]*", span) or "<" in span:
                    continue
                checked += 1
                if not (REPO / span.split("::")[0]).exists():
                    problems.append(f"{rel(path)}:{n}: `{span}` does not exist")
    assert checked and not problems, "\n".join(problems)
