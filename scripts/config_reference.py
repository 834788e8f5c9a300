"""Write docs/config.md, the config reference, from conf/ and the schemas: `make docs`.

Every group with its choices (each described by its yaml's first sentence), every key with its
type (the schema's annotation, else the yaml value's), its default as the yamls set it (per choice
where they differ) and its meaning (the key's comment in a yaml of its group, else its schema
field's comment). Keys with no comment anywhere are listed at the end and counted on stdout:
give them one. tests/test_docs.py fails while docs/config.md is not what this script writes.

    python scripts/config_reference.py           # writes docs/config.md
    python scripts/config_reference.py --check   # exit 1 when docs/config.md is stale
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import re
import sys
import typing
from functools import lru_cache
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from attnexp.config import nodes
from attnexp.config.compose import compose, group_options, groups

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
TARGET = REPO / "docs" / "config.md"
# groups whose yamls set keys anywhere in the config (`# @package _global_`): listed with their
# choices; the keys they set are the other groups' and the root's
GLOBAL = "@package _global_"
# folders of conf/ that are not groups a user picks from, with the group path under hydra/ that is
LAUNCHERS = "hydra/launcher"
# Hydra's own keys, the same in every node (Hydra's instantiate documents them)
HYDRA_KEYS = {
    "_target_": "the class or function built from this node: any importable name, a module of your own too",
    "_partial_": "built as a partial: attnexp supplies the remaining arguments (dimensions, parameters, ...)",
}
# a text model reads keys only text data have (rules.py says so at start-up): compose it with them
COMPANION = {
    "model": {"text_cct2": ["data=text_demo"], "text_cct4": ["data=text_demo"], "text_cct6": ["data=text_demo"]}
}


# ---------------------------------------------------------------- yaml comments


def read_yaml_comments(path: Path) -> tuple[list[str], dict[str, str]]:
    """(the header's comment lines, {dotted key: its line's trailing comment}) of one yaml file."""
    header, comments, stack, in_header, skip_indent = [], {}, [], True, None
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            if in_header and stripped.startswith("#"):
                text = stripped.lstrip("#").strip()
                if not text.startswith("@package"):
                    header.append(text)
            elif in_header and header:
                in_header = False
            continue
        in_header = False
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None and indent > skip_indent:
            continue  # inside the defaults list, or a list's items
        skip_indent = None
        match = re.match(r"([\w.+~/@-]+):(.*)$", stripped)
        if not match:
            continue
        key, rest = match.groups()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        dotted = ".".join(k for _, k in stack)
        if dotted == "defaults":
            skip_indent = indent
            continue
        comment = re.search(r"(?:^|\s)#\s?(.*)$", rest)
        if comment and comment.group(1).strip():
            comments[dotted] = comment.group(1).strip()
    return header, comments


def first_sentence(header: list[str]) -> str:
    """A header's first paragraph up to its first full stop (commands quoted in it left out)."""
    words = []
    for line in header:
        if not line or line.startswith(("attnexp ", "Expected time")):
            break
        words.append(line)
    text = " ".join(words)
    end = re.search(r"\.(\s|$)", text)
    return text[: end.start() + 1] if end else text


# ---------------------------------------------------------------- schema comments and types


@lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """{field: its comment} of a schema dataclass: the comment on the field's line, else the
    comment lines just above it."""
    out, above = {}, []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"(\w+):[^#]*?(?:#\s?(.*))?$", stripped)
        if match and not stripped.startswith(("def ", "class ")):
            name, trailing = match.groups()
            text = trailing or " ".join(above)
            if text and not text.startswith("noqa"):
                out[name] = text.strip()
        above = []
    return out


def type_name(hint: typing.Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        return f"{type_name(args[0])} or null"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return " \\| ".join(m.value for m in hint)
    origin = typing.get_origin(hint)
    if origin in (list, typing.List):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin in (dict, typing.Dict):
        return "mapping"
    if hint is typing.Any:
        return "any"
    return getattr(hint, "__name__", str(hint))


def value_type(value: typing.Any) -> str:
    if isinstance(value, str) and "${" in value:
        return "any"  # an interpolation: the type of what it reads
    if value is None:
        return "any"
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "mapping"}[type(value)]


# ---------------------------------------------------------------- the keys of each group


@dataclasses.dataclass
class Key:
    name: str  # dotted, from the root
    type: str
    values: dict[str, list[str]]  # the value as a yaml sets it → the choices that set it
    meaning: str


def fmt(value: typing.Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False).replace('"', "")
    return str(value)


def flatten(node: typing.Any, prefix: str, schema_type: type | None, out: dict) -> None:
    """{dotted key: (raw value, type)} of a node, as its yamls set it (interpolations kept)."""
    raw = OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) else node
    hints = typing.get_type_hints(schema_type) if dataclasses.is_dataclass(schema_type) else {}
    for key, value in raw.items():
        child = node._get_node(key) if isinstance(node, DictConfig) else None
        child_type = OmegaConf.get_type(child) if isinstance(child, DictConfig) else None
        if isinstance(value, dict) and value:
            flatten(child if isinstance(child, DictConfig) else value, f"{prefix}{key}.", child_type, out)
            continue
        hint = hints.get(key)
        kind = type_name(hint) if hint is not None and hint is not typing.Any else value_type(value)
        out[f"{prefix}{key}"] = (value, kind)


def schema_meanings(node: DictConfig, prefix: str, out: dict) -> None:
    """{dotted key: its schema field's comment} for a node and its typed children."""
    cls = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(cls):
        for name, text in field_comments(cls).items():
            out.setdefault(f"{prefix}{name}", text)
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            schema_meanings(child, f"{prefix}{key}.", out)


def yaml_files(group: str, choice: str) -> list[Path]:
    """A choice's yaml, then the yamls of its group its defaults list names (bases)."""
    own = CONF / group / f"{choice}.yaml"
    bases = [p for p in sorted((CONF / group).rglob("*.yaml")) if p != own]
    return [own] + bases


@lru_cache(maxsize=None)
def group_keys(group: str) -> tuple[list[str], list[Key]]:
    """(the group's choices, its keys over every choice)."""
    choices = group_options(group)
    default = default_choices().get(group)
    ordered = ([default] if default in choices else []) + [c for c in choices if c != default]
    table: dict[str, Key] = {}
    for choice in ordered:
        cfg = compose([f"{group}={choice}", *COMPANION.get(group, {}).get(choice, [])])
        node = cfg[group]
        flat: dict = {}
        flatten(node, f"{group}.", OmegaConf.get_type(node), flat)
        meanings: dict[str, str] = {}
        for path in yaml_files(group, choice):
            for key, text in read_yaml_comments(path)[1].items():
                meanings.setdefault(f"{group}.{key}", text)
        schema_meanings(node, f"{group}.", meanings)
        for name, (value, kind) in flat.items():
            meanings.setdefault(name, HYDRA_KEYS.get(name.rpartition(".")[2], ""))
            key = table.setdefault(name, Key(name, kind, {}, ""))
            key.values.setdefault(fmt(value), []).append(choice)
            key.meaning = key.meaning or meanings.get(name, "")
    return ordered, list(table.values())


@lru_cache(maxsize=None)
def root_keys() -> list[Key]:
    """The keys no group holds: the root's own, `sweep`, `compute`, `recipe`, `timing`."""
    cfg = compose([])
    skip = set(groups())
    flat: dict = {}
    flatten(cfg, "", nodes.RootSchema, flat)
    meanings = dict(read_yaml_comments(CONF / "config.yaml")[1])
    schema_meanings(cfg, "", meanings)
    for name, text in field_comments(nodes.RootSchema).items():
        meanings.setdefault(name, text)
    for path in sorted((CONF / "recipe").glob("*.yaml")):
        for key, text in read_yaml_comments(path)[1].items():
            meanings.setdefault(key, text)
    return [
        Key(name, kind, {fmt(value): []}, meanings.get(name, ""))
        for name, (value, kind) in flat.items()
        if name.split(".")[0] not in skip or name.split(".")[0] == "recipe"
    ]


@lru_cache(maxsize=None)
def default_choices() -> dict[str, str]:
    cfg = compose([], return_hydra_config=True)
    return {k: v for k, v in cfg.hydra.runtime.choices.items() if v is not None}


@lru_cache(maxsize=None)
def all_keys() -> dict[str, list[str]]:
    """{root node: every dotted key any choice of it holds} (tests/test_docs.py checks prose against it)."""
    out: dict[str, list[str]] = {}
    for key in root_keys():
        out.setdefault(key.name.split(".")[0], []).append(key.name)
    for group in groups():
        if not is_global(group):
            out[group] = [k.name for k in group_keys(group)[1]]
    return out


def is_global(group: str) -> bool:
    return any(GLOBAL in p.read_text().split("\n", 1)[0] for p in (CONF / group).glob("*.yaml"))


# ---------------------------------------------------------------- the page


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def default_cell(key: Key, choices: list[str]) -> str:
    if len(key.values) == 1:
        ((value, owners),) = key.values.items()
        only = "" if not owners or len(owners) == len(choices) else f" ({', '.join(owners)})"
        return f"`{cell(value)}`{only}"
    return "; ".join(f"`{cell(value)}` ({', '.join(owners)})" for value, owners in key.values.items())


def key_table(keys: list[Key], choices: list[str]) -> list[str]:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key in keys:
        lines.append(f"| `{key.name}` | {key.type} | {default_cell(key, choices)} | {cell(key.meaning)} |")
    return lines


def choice_table(group: str, choices: list[str]) -> list[str]:
    lines = ["| choice | what it is |", "|---|---|"]
    default = default_choices().get(group)
    for choice in choices:
        text = first_sentence(read_yaml_comments(CONF / group / f"{choice}.yaml")[0])
        mark = " (default)" if choice == default else ""
        lines.append(f"| `{choice}`{mark} | {cell(text)} |")
    return lines


def render() -> tuple[str, list[str]]:
    """(the page, the keys without a meaning)."""
    out = [
        "# Config reference",
        "",
        "<!-- Generated by `make docs` (scripts/config_reference.py) from conf/ and the schemas",
        "     (attnexp/config/schema.py, attnexp/config/nodes.py): edit those, not this page. -->",
        "",
        "Pick one choice of a group with `group=choice`, set a key with `key=value` (`attnexp --help`",
        "lists the groups, `attnexp ... --cfg job` prints a composed config). A default is the value as",
        "the yamls set it: `${...}` reads another key; where choices set a key differently, each value",
        "names its choices. Types come from the schemas; `any` is a value the schema does not type.",
        "",
    ]
    missing: list[str] = []
    top = root_keys()
    out += ["## Top-level keys", "", "`mode`, `seed` and the nodes no group holds: `sweep`, `compute`, `recipe`"]
    out += ["(set by the `recipe` group), `timing`.", ""]
    out += key_table(top, []) + [""]
    missing += [k.name for k in top if not k.meaning]
    for group in groups():
        choices = group_options(group)
        out += [f"## `{group}`", ""]
        if is_global(group):
            out += ["Its choices set keys of several groups at once (`--cfg job` shows what they set).", ""]
            out += choice_table(group, choices) + [""]
            continue
        ordered, keys = group_keys(group)
        out += choice_table(group, ordered) + [""]
        out += key_table(keys, ordered) + [""]
        missing += [k.name for k in keys if not k.meaning]
    launchers = sorted(p.stem for p in (CONF / LAUNCHERS).glob("*.yaml"))
    out += [f"## `{LAUNCHERS}`", "", "attnexp's own launcher choices (Hydra's plugins add `joblib`, `submitit_slurm`", "and others; [sweeps.md](sweeps.md) says when to use which).", ""]  # fmt: skip
    out += ["| choice | what it is |", "|---|---|"]
    for name in launchers:
        out.append(f"| `{name}` | {cell(first_sentence(read_yaml_comments(CONF / LAUNCHERS / f'{name}.yaml')[0]))} |")
    out += ["", f"## Keys without a comment ({len(missing)})", ""]
    out += ["Each wants a comment on its line in a yaml of its group (or on its schema field).", ""]
    out += [f"`{name}`" + ("," if i < len(missing) - 1 else "") for i, name in enumerate(missing)]
    return "\n".join(out).rstrip() + "\n", missing


def main(argv: list[str]) -> int:
    page, missing = render()
    if "--check" in argv:
        if TARGET.read_text() != page:
            print(f"{TARGET.relative_to(REPO)} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(page)
    print(f"wrote {TARGET.relative_to(REPO)}: {len(missing)} keys without a comment")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
