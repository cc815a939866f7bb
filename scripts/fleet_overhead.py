"""What `resnetx fleet` costs over doing it by hand: three kinds on a local Ray cluster against the same three kinds'
`export --engines-only` + `verify` + `bench` run one after another, in one run, on this machine.

    python scripts/fleet_overhead.py artifacts/default            # prints both wall times, the ratio, Ray's share
    python scripts/fleet_overhead.py artifacts/default --show      # also the fleet's own output (plan and report)

The cluster (a head and one node per kind, labelled resnetx.io/kind and resnetx.io/cc, on 127.0.0.1 only) is
started first and its start-up is not counted. Ray's share of a kind is the time between the driver dispatching the
kind's task and receiving its result, less the time the task itself ran (the fleet prints it per kind).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from resnetx.gpus import KINDS as ALL_KINDS  # noqa: E402

KINDS = {k: ALL_KINDS[k] for k in ("A10G", "L4", "GeForce-RTX-5090")}
RAY_SHARE_BAR = 3.0  # seconds of Ray's own per kind (dispatch, object store, result) this machine should stay under


def resnetx(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "160"})
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--samples", default="512")
    ap.add_argument("--batch", default="1,8,32")
    ap.add_argument("--iters", default="20")
    ap.add_argument("--min-seconds", default="0.5")
    ap.add_argument("--show", action="store_true", help="print the fleet's own output too")
    a = ap.parse_args()
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray.cluster_utils import Cluster

    work = Path(tempfile.mkdtemp(prefix="rx-fleet-overhead-"))
    start = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for kind, cc in KINDS.items():
        cluster.add_node(num_cpus=1, labels={"resnetx.io/kind": kind, "resnetx.io/cc": cc})
    cluster.wait_for_nodes()
    print(f"cluster of {len(KINDS)} kinds up in {time.perf_counter() - start:.0f} s (not counted)", flush=True)
    common = ["--samples", a.samples, "--batch", a.batch, "--iters", a.iters, "--min-seconds", a.min_seconds]
    try:
        fleet_dir = shutil.copytree(a.folder, work / "fleet")
        plan_s, plan = timed(resnetx("fleet", str(fleet_dir), "--address", cluster.address, "--plan"))
        fleet_s, out = timed(resnetx("fleet", str(fleet_dir), "--address", cluster.address, "--force", *common))
    finally:
        cluster.shutdown()
    if a.show:
        print(plan, out)
    by_hand = 0.0
    for kind, cc in KINDS.items():
        folder = shutil.copytree(a.folder, work / kind)
        sm = "SM" + cc.replace(".", "")
        for cmd in (resnetx("export", "--out", str(folder), "--engines-only", "--engine", "rtx",
                            "--rtx-compute-capability", sm),
                    resnetx("verify", str(folder), "--samples", a.samples),
                    resnetx("bench", str(folder), "--runtime", "ort,trt", *common[2:])):
            by_hand += timed(cmd)[0]
    share = json.loads((fleet_dir / "reports" / "fleet.json").read_text()).get("ray_seconds", {})
    print(f"\nfleet over {len(KINDS)} kinds: {fleet_s:.1f} s (plan alone {plan_s:.1f} s); the same engines-only + "
          f"verify + bench one after another: {by_hand:.1f} s; ratio fleet/by hand {fleet_s / by_hand:.2f}")
    worst = max(share.values(), default=float("nan"))
    print(f"Ray's share per kind: {', '.join(f'{k} {v:.2f} s' for k, v in share.items()) or 'none recorded'}; "
          f"largest {worst:.2f} s, {'within' if worst < RAY_SHARE_BAR else 'OVER'} the {RAY_SHARE_BAR:g} s bar")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
