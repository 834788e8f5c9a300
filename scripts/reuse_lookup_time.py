"""Time sweep.reuse's look-up over N existing runs: `python scripts/reuse_lookup_time.py 100 1000`.

Writes N fake run folders in a temporary folder, laid out as sweeps write them
(multirun/<date>/<time>_sweep/<job>/seed_<n>/ with .hydra/, tb/ and checkpoints/ beside
metrics.json), each metrics.json as long as a 300-epoch run's (its history), one of them
holding the key looked up; then times attnexp.sweep.reuse.candidates for that key (best of 5,
the file system's cache warm after the first).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from attnexp.sweep.reuse import candidates

EPOCHS = 300
JOBS_PER_SWEEP = 20


def fake_runs(root: Path, n: int, key: str) -> None:
    history = [{"epoch": e, "val_acc1": 50.0 + e / 10, "val_loss": 1.0, "step": 100 * e} for e in range(1, EPOCHS + 1)]
    for i in range(n):
        run = root / "multirun" / "2026-01-01" / f"12-00-{i // JOBS_PER_SWEEP:02d}_sweep" / f"seqpool=v{i}" / "seed_0"
        for sub in (".hydra", "tb", "checkpoints"):
            (run / sub).mkdir(parents=True)
        metrics = {
            "status": "done",
            "identity": {"key": key if i == n // 2 else f"{i:016x}"},
            "finished_at": "2026-01-01T12:00:00+00:00",
            "wall_time_s": 100.0,
            "history": history,
        }
        (run / "metrics.json").write_text(json.dumps(metrics, indent=2))


def main(counts: list[int]) -> None:
    key = "feedfacecafebeef"
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            fake_runs(Path(tmp), n, key)
            roots = [Path(tmp) / "outputs", Path(tmp) / "multirun"]
            times = []
            for _ in range(5):
                start = time.perf_counter()
                found = candidates(key, roots)
                times.append(time.perf_counter() - start)
            assert len(found) == 1
            print(f"{n} runs: look-up {min(times) * 1000:.1f} ms (best of 5; first {times[0] * 1000:.1f} ms)")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100, 1000])
