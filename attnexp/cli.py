"""The `attnexp` console script: a thin shell over attnexp.sweep.launch.

A bad override ends with one line (`attnexp: error: key=value: reason`), exit
code 2, no traceback and no run directory. `--help` and `--cfg job|hydra|all` are
answered from the composed config without importing torch; `--cfg key` prints the
run's identity (torch's versions are part of it). Hydra's other flags (`--info`,
`--hydra-help`, `--shell-completion`) go to Hydra itself.
"""

from __future__ import annotations

import os
import sys

from omegaconf import OmegaConf

from attnexp.config.compose import compose, group_options, groups, split_hydra
from attnexp.errors import StartupError

EXIT_CONFIG = 2
MULTIRUN = ("-m", "--multirun")
HYDRA_FLAGS = ("--info", "-i", "--hydra-help", "--shell-completion", "-sc")


def fail(message: str, code: int = EXIT_CONFIG) -> None:
    print(f"attnexp: error: {message}", file=sys.stderr)
    sys.exit(code)


def _groups_help() -> str:
    """`--help`'s group list: conf/'s folders (Hydra's own list would show the schema/ tree too)."""
    return "\n".join(f"{group}: {', '.join(group_options(group))}" for group in groups())


OmegaConf.register_new_resolver("attnexp_groups", _groups_help, replace=True)


def show_config(flags: list[str], overrides: list[str]) -> None:
    """--help (conf/hydra's template) and --cfg job|hydra|all [--resolve] [--package KEY]."""
    cfg = compose(overrides, return_hydra_config=True)
    if "--help" in flags or "-h" in flags:
        print(OmegaConf.to_container(cfg.hydra.help, resolve=True)["template"])
        return
    at = flags.index(next(f for f in flags if f in ("--cfg", "-c")))
    which = flags[at + 1] if at + 1 < len(flags) else ""
    if which == "key":
        show_key(cfg)
        return
    if which not in ("job", "hydra", "all"):
        fail(f"--cfg {which}: show job, hydra, all or key".replace("--cfg : ", "--cfg: "))
    node = cfg if which == "all" else cfg.hydra if which == "hydra" else split_hydra(cfg)[0]
    package = next((flags[i + 1] for i, f in enumerate(flags[:-1]) if f in ("--package", "-p")), None)
    from attnexp.sweep.launch import hydra_config

    with hydra_config(cfg):  # --resolve reads ${hydra:...}
        if package:  # a key of the whole config, as Hydra's --package
            node = OmegaConf.select(cfg if which != "job" else node, package)
            if not OmegaConf.is_config(node):
                print(node)
                return
        print(OmegaConf.to_yaml(node, resolve="--resolve" in flags), end="")


def show_key(cfg) -> None:
    """--cfg key: the identity the job would record here (attnexp/train/identity.py; imports torch)."""
    from attnexp.assemble.objects import seed_and_threads
    from attnexp.train.identity import describe

    body = split_hydra(cfg)[0]
    seed_and_threads(body)  # the threads the job would run with
    print(describe(body))


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(flags with their values, overrides)."""
    flags, overrides, takes_value = [], [], False
    for a in argv:
        if takes_value or a.startswith("-"):
            flags.append(a)
            takes_value = a in ("--cfg", "-c", "--package", "-p", "--info", "-i", "--shell-completion", "-sc")
        else:
            overrides.append(a)
    return flags, overrides


def hydra_flags() -> None:
    """Hydra's own informational flags, read by Hydra from the command line."""
    import hydra

    @hydra.main(config_path="pkg://attnexp.conf", config_name="config", version_base="1.3")
    def _noop(cfg) -> None:
        return None

    _noop()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # the command as typed, for provenance (jobs in other processes inherit it)
    os.environ["ATTNEXP_COMMAND"] = " ".join(["attnexp"] + argv)
    flags, overrides = _split(argv)
    if any(f.split("=", 1)[0] in HYDRA_FLAGS for f in flags):
        if argv != sys.argv[1:]:
            fail("Hydra's --info, --hydra-help and --shell-completion work from the command line only")
        hydra_flags()
        return
    unknown = [f for f in flags if f.startswith("-") and f not in MULTIRUN + ("--help", "-h", "--cfg", "-c",
                                                                          "--resolve", "--package", "-p")]  # fmt: skip
    if unknown:
        fail(f"{unknown[0]}: unknown flag (attnexp --help lists what it takes)")
    from attnexp.sweep import launch

    try:
        if any(f in flags for f in ("--help", "-h", "--cfg", "-c")):
            show_config(flags, overrides)
        elif any(f in MULTIRUN for f in flags):
            code = launch.sweep(overrides)
            if code:
                sys.exit(code)
        else:
            launch.run(overrides)
    except StartupError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
