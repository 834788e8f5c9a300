"""The GPU check (`make gpu-check OUT=folder`): every step writes its result into OUT as soon as it
ends, so a check cut short still reports what it measured. Each of its 5 steps (6 with --compile) is
cut off after --step-timeout seconds (default 120), so it ends within about 10 minutes (12) after the
install; how long it really takes is not measured yet: no GPU has run it.

1. the tests marked `gpu` (bf16, CUDA AutoAugment mask path, device-resident loader, fused AdamW,
   a pack of 4 against its unpacked runs)              → OUT/1_gpu_tests.txt
2. attnexp-bench --pack 1,2,4,8,16 for cct2 and cct7   → OUT/2_bench_pack.{txt,json}
3. timed CLI runs, 2 epochs of data=fake at CIFAR-10 size (50,000 / 10,000 images): cct2 and cct7
   unpacked, cct2 packed K=8; s/epoch and the projected 200-epoch time per run and per member
                                                       → OUT/3_timed_runs.txt (+ a line per run)
4. (optional, --compile) the same cct2 run with compute.compile=true → OUT/4_compile.txt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
CIFAR = ["data=fake", "data.train_size=50000", "data.test_size=10000", "trainer=gpu", "trainer.max_epochs=2"]
EPOCHS = 200


def step(out: Path, name: str, command: list[str], timeout: int, env: dict | None = None) -> tuple[int, str]:
    """Run one command, its output copied to OUT/name as it ends (also when it times out)."""
    started = time.time()
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
        )
        code, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        code, text = 124, f"{e.stdout or ''}{e.stderr or ''}\n[timed out after {timeout}s]"
    text = f"$ {' '.join(command)}\n[exit {code}, {time.time() - started:.0f}s]\n{text}"
    (out / name).write_text(text)
    print(text[-3000:], flush=True)
    return code, text


def epoch_seconds(run_dir: Path) -> list[float]:
    """Wall seconds of each epoch: the epoch-end lines' `Time:` fields in console.log."""
    lines = (run_dir / "console.log").read_text().splitlines() if (run_dir / "console.log").is_file() else []
    return [float(line.rsplit("Time:", 1)[1].strip().rstrip("s")) for line in lines if "Time:" in line]


def timed_runs(out: Path, timeout: int) -> None:
    report = out / "3_timed_runs.txt"
    lines = []
    runs = [
        ("cct2", [], 1),
        ("cct7", [], 1),
        ("cct2_pack8", ["-m", "seed=0,1,2,3,4,5,6,7", "sweep.pack=seed"], 8),
    ]
    for name, extra, k in runs:
        model = name.split("_")[0]
        folder = out / "runs" / name
        where = f"hydra.sweep.dir={folder}" if k > 1 else f"hydra.run.dir={folder}"
        step(out, f"3_{name}.txt", [str(BIN / "attnexp"), *extra, f"model={model}", *CIFAR, where], timeout)
        lead = next((p.parent for p in folder.rglob("console.log")), folder) if k > 1 else folder
        seconds = epoch_seconds(lead)
        if not seconds:
            lines.append(f"{name}: no epoch finished")
        else:
            per_epoch = seconds[-1]  # the second epoch: no warm-up, no compilation
            run_time = per_epoch * EPOCHS
            lines.append(
                f"{name}: {per_epoch:.1f} s/epoch (epochs: {', '.join(f'{s:.1f}' for s in seconds)}); "
                f"200 epochs ≈ {run_time / 60:.1f} min per {'pack of ' + str(k) if k > 1 else 'run'}"
                + (f", {run_time / k / 60:.1f} min per member" if k > 1 else "")
            )
        report.write_text("\n".join(lines) + "\n")
    print(report.read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder for the results (created)")
    p.add_argument("--compile", action="store_true", help="also time a torch.compile run")
    p.add_argument("--step-timeout", type=int, default=120, help="seconds per step (default 120)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "0_machine.txt").write_text(
        subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout
        + subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"],
            capture_output=True,
            text=True,
        ).stdout  # fmt: skip
    )
    gpu = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES") or "0"}
    step(out, "1_gpu_tests.txt", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
         args.step_timeout, gpu)  # fmt: skip
    bench = [str(BIN / "attnexp-bench"), "--models", "cct2,cct7", "--pack", "1,2,4,8,16", "--batch-size", "128"]
    step(out, "2_bench_pack.txt", [*bench, "--out", str(out / "2_bench_pack.json")], args.step_timeout)
    timed_runs(out, args.step_timeout)
    if args.compile:
        folder = out / "runs" / "cct2_compile"
        command = [str(BIN / "attnexp"), "model=cct2", *CIFAR, "compute.compile=true", f"hydra.run.dir={folder}"]
        step(out, "4_compile.txt", command, args.step_timeout)
    print(json.dumps({"results": sorted(str(p) for p in out.glob("*.txt"))}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
