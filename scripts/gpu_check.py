"""The GPU check (`make gpu-check OUT=folder`): every step writes its result into OUT as soon as it
ends (its output to OUT/<step>.txt, its exit code to OUT/steps.json), so a check cut short still
reports what it measured.

1_gpu_tests   the tests marked `gpu`, collected from only the modules that hold them (the other
              modules import packages the GPU machine lacks)                → 1_gpu_tests.txt
2_bench_pack  attnexp-bench --pack 1,2,4,8,16 for cct2 and cct7              → 2_bench_pack.{txt,json}
3_cct2, 3_cct7, 3_cct2_pack8
              timed CLI runs, 2 epochs of data=fake at CIFAR-10 size (50,000 / 10,000 images),
              the last one a pack of 8 seeds; s/epoch and the projected 200-epoch time per run
              and per member                                               → 3_timed_runs.txt
4_compile     (--compile) the cct2 run with compute.compile=true

Time: the steps share --budget seconds (default 360 = 6 minutes; 1200 with --cpu, where the limits
only catch a hang) in proportion to their weights, so the sum of their time limits never exceeds it
(--compile included); the install and the machine's start come on top. How long the steps really take on a GPU is not measured yet: none has run them.
A step cut off at its limit keeps what it wrote (a timed run's finished epochs still count).

--cpu (`make gpu-rehearsal`): the same steps at small sizes on the CPU, with the settings of the GPU
recipe (trainer=gpu) that exist there: bf16-mixed, fused AdamW, the device-resident loader, a pack.
The gpu tests skip there (no CUDA): what it proves is that they are collected and import in the GPU
machine's interpreter. On the GPU a skipped gpu test fails the step.

--rerun-failed: run only the steps whose exit code in OUT/steps.json is not 0, or that have none.
Exits 1 when any step's recorded exit code is not 0; OUT/pip_freeze.txt lists the interpreter's
packages (scripts/gpu-image.txt is corrected from it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
TESTS = Path(__file__).resolve().parent.parent / "tests"
EPOCHS = 200
GPU_RUN = ["data=fake", "data.train_size=50000", "data.test_size=10000", "trainer=gpu", "trainer.max_epochs=2"]
# trainer=gpu's settings that exist on a CPU, at a size a 2-core machine runs in seconds
CPU_RUN = [
    "data=fake",
    "data.train_size=128",
    "data.test_size=64",
    "trainer=cpu",
    "trainer.precision=bf16-mixed",
    "optimizer.fused=true",
    "data.loader=device",
    "trainer.max_epochs=2",
    "model.dim=32",
    "model.num_layers=2",
]
# name: weight (its share of --budget)
WEIGHTS = {"1_gpu_tests": 3, "2_bench_pack": 2, "3_cct2": 2, "3_cct7": 2, "3_cct2_pack8": 3, "4_compile": 2}
PACK = ["-m", "seed=0,1,2,3,4,5,6,7", "sweep.pack=seed"]


def run(out: Path, name: str, command: list[str], timeout: int, env: dict) -> int:
    """Run one command, its output copied to OUT/name.txt as it ends (also when it times out)."""
    started = time.time()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env})
        code, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        output = [b.decode(errors="replace") if isinstance(b, bytes) else b or "" for b in (e.stdout, e.stderr)]
        code, text = 124, f"{''.join(output)}\n[timed out after {timeout}s]"
    except OSError as e:  # the command is missing: a failed step, not a crashed check
        code, text = 127, str(e)
    text = f"$ {' '.join(command)}\n[exit {code}, {time.time() - started:.0f}s, limit {timeout}s]\n{text}"
    (out / f"{name}.txt").write_text(text)
    print(text[-3000:], flush=True)
    return code


def gpu_test_modules() -> list[str]:
    return sorted(str(p) for p in TESTS.glob("test_*.py") if "mark.gpu" in p.read_text())


def epoch_seconds(run_dir: Path) -> list[float]:
    """Wall seconds of each epoch: the epoch-end lines' `Time:` fields in console.log (a pack writes
    one line per member and epoch, all with the pack's time)."""
    lines = (run_dir / "console.log").read_text().splitlines() if (run_dir / "console.log").is_file() else []
    found = re.findall(r"^\[Epoch (\d+)\].*Time: ([\d.]+)s", "\n".join(lines), re.MULTILINE)
    return list({int(epoch): float(seconds) for epoch, seconds in found}.values())


def timed_report(out: Path, cpu: bool) -> None:
    lines = ["--cpu: small sizes on the CPU; the 200-epoch figures project nothing"] if cpu else []
    for name, k in (("cct2", 1), ("cct7", 1), ("cct2_pack8", 8)):
        folder = out / "runs" / name
        lead = next((p.parent for p in sorted(folder.rglob("console.log"))), folder)
        seconds = epoch_seconds(lead)
        if not seconds:
            lines.append(f"{name}: no epoch finished")
            continue
        per_epoch = seconds[-1]  # the second epoch: no warm-up, no compilation
        run_time = per_epoch * EPOCHS
        lines.append(
            f"{name}: {per_epoch:.1f} s/epoch (epochs: {', '.join(f'{s:.1f}' for s in seconds)}); "
            f"200 epochs ≈ {run_time / 60:.1f} min per {'pack of ' + str(k) if k > 1 else 'run'}"
            + (f", {run_time / k / 60:.1f} min per member" if k > 1 else "")
        )
    (out / "3_timed_runs.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def steps(out: Path, cpu: bool, compile_: bool) -> dict[str, tuple[list[str], dict]]:
    """Each step's command and environment, by name."""
    sizes = CPU_RUN if cpu else GPU_RUN
    # the tests hide GPUs unless CUDA_VISIBLE_DEVICES is set (tests/conftest.py); the CLI sees all
    env = {"CUDA_VISIBLE_DEVICES": ""} if cpu else {}
    tests_env = env if cpu else {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES") or "0"}
    pytest = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *gpu_test_modules()]
    bench = [str(BIN / "attnexp-bench"), "--models", "cct2,cct7", "--pack", "1,2,4,8,16", "--batch-size", "128"]
    if cpu:
        bench = [str(BIN / "attnexp-bench"), "--models", "cct2", "--pack", "1,2", "--batch-size", "8", "--device=cpu"]
    found = {
        "1_gpu_tests": (pytest, tests_env),
        "2_bench_pack": ([*bench, "--out", str(out / "2_bench_pack.json")], env),
    }
    for name, extra in (("cct2", []), ("cct7", []), ("cct2_pack8", PACK)):
        folder = out / "runs" / name
        where = f"hydra.sweep.dir={folder}" if extra else f"hydra.run.dir={folder}"
        found[f"3_{name}"] = ([str(BIN / "attnexp"), *extra, f"model={name.split('_')[0]}", *sizes, where], env)
    if compile_:
        where = f"hydra.run.dir={out / 'runs' / 'compile'}"
        found["4_compile"] = ([str(BIN / "attnexp"), "model=cct2", *sizes, "compute.compile=true", where], env)
    return found


def write_machine(out: Path) -> None:
    parts = []
    for command in (
        ["nvidia-smi"],
        [sys.executable, "-c", "import sys, torch; print(sys.version); print('torch', torch.__version__, "
         "torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"],
        [sys.executable, "-m", "pip", "freeze", "--all"],
    ):  # fmt: skip
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
            text = proc.stdout + proc.stderr
        except (OSError, subprocess.TimeoutExpired) as e:
            text = f"{command[0]}: {e}\n"
        parts.append(text)
    (out / "0_machine.txt").write_text(parts[0] + parts[1])
    (out / "pip_freeze.txt").write_text(parts[2])
    print(parts[0] + parts[1], flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder for the results (created)")
    p.add_argument("--cpu", action="store_true", help="the rehearsal: small sizes on the CPU (make gpu-rehearsal)")
    p.add_argument("--compile", action="store_true", help="also time a torch.compile run")
    p.add_argument("--budget", type=int, help="seconds shared by the steps' limits (default 360; --cpu: 1200)")
    p.add_argument("--rerun-failed", action="store_true", help="only the steps OUT/steps.json records as failed")
    args = p.parse_args()
    # on the CPU the limits only catch a hang: a loaded 2-core CI machine may run several times slower
    budget = args.budget or (1200 if args.cpu else 360)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = out / "steps.json"
    results = json.loads(record.read_text()) if args.rerun_failed and record.is_file() else {}
    todo = steps(out, args.cpu, args.compile)
    limits = {name: budget * WEIGHTS[name] // sum(WEIGHTS[n] for n in todo) for name in todo}
    write_machine(out)
    for name, (command, env) in todo.items():
        if results.get(name, {}).get("exit", 1) == 0:
            continue
        # a rerun starts in an empty folder: the CLI would pick <folder>_1 and the report read the old one
        shutil.rmtree(out / "runs" / name.split("_", 1)[1], ignore_errors=True)
        started = time.time()
        code = run(out, name, command, limits[name], env)
        if name == "1_gpu_tests":
            text = (out / f"{name}.txt").read_text()
            if not args.cpu and re.search(r"\b\d+ skipped", text):
                code = code or 1  # on the GPU a skipped CUDA test is a test that did not run
        results[name] = {"exit": code, "seconds": round(time.time() - started, 1), "limit": limits[name]}
        record.write_text(json.dumps(results, indent=2) + "\n")
        if name.startswith("3_"):
            timed_report(out, args.cpu)
    failed = [name for name in todo if results.get(name, {}).get("exit") != 0]
    print(f"\n{'step':<14} exit  seconds  limit")
    for name in todo:
        r = results.get(name, {})
        print(f"{name:<14} {r.get('exit', '-'):>4}  {r.get('seconds', '-'):>7}  {r.get('limit', '-'):>5}")
    print(f"{'FAILED: ' + ', '.join(failed) if failed else 'all steps passed'} (results in {out})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
