"""Two-rank gloo runs for the trainer's tests: launch a test file under torchrun, and end a rank cleanly."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_two_ranks(script: str, out_path: Path) -> dict:
    """Runs `script` (a test file whose __main__ calls its worker with argv[1]) on 2 CPU ranks under torchrun;
    returns the JSON its rank 0 wrote to out_path. Fails with the ranks' stderr when they did not finish."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", script,
           str(out_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(Path(out_path).read_text())


def finish_rank() -> None:
    """Ends a torchrun rank after its result is written: a barrier so no rank tears gloo down while the other
    still has collectives in flight, then an exit without C++ static destructors (one of them, not curate's,
    aborted now and then with "terminate called without an active exception")."""
    import torch.distributed as dist
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
