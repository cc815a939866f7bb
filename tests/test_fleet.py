"""resnetx fleet on a real multi-node Ray cluster on this machine: three kinds build real TensorRT-RTX engines ahead of
time, verify and bench; the driver merges, resumes, and survives a node that dies. Plans are checked without Ray."""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from pathlib import Path

import pytest

from pipeline.fleet.node import NodeInfo
from pipeline.fleet.plan import CC_LABEL, KIND_LABEL, FleetOptions, plan_fleet
from pipeline.fleet.run import run_fleet
from pipeline.folder.audit import audit_folder
from pipeline.folder.manifest import read_manifest
from pipeline.folder.verdicts import read_verdicts
from tests.conftest import copy_folder, needs_rtx

KINDS = {"A10G": "8.6", "L4": "8.9", "RTX5090": "12.0"}
QUICK = {"iters": 2, "min_seconds": 0.0, "rounds": 1, "warmup": 0, "warmup_seconds": 0.0}


def _node(node_id: str, gpu: str | None = None, cc: str | None = None, backends: tuple[str, ...] = ("tensorrt_rtx",),
          version: str = "0.1.0") -> NodeInfo:
    return NodeInfo(node_id, "host", version, gpu, cc, backends)


def test_the_plan_says_what_builds_where_and_why(tmp_path: Path) -> None:
    opts = FleetOptions(folder=tmp_path, kinds=("L4", "H100", "T4", "orin", "odd", "A10G", "cpu", "gone"))
    found = [({"ray.io/accelerator-type": "L4"}, _node("a", "NVIDIA L4", "8.9")),
             ({"ray.io/accelerator-type": "H100"}, _node("b", "NVIDIA H100", "9.0")),
             ({"ray.io/accelerator-type": "T4"}, _node("c", "Tesla T4", "7.5")),
             ({KIND_LABEL: "orin"}, _node("d", backends=("tensorrt", "tensorrt_rtx"))),
             ({KIND_LABEL: "odd"}, _node("e")),
             ({KIND_LABEL: "A10G", CC_LABEL: "8.6"}, _node("f", version="0.0.9")),
             ({}, _node("g", backends=()))]
    plans = {p.kind: p for p in plan_fleet(opts, found, "0.1.0")}
    assert plans["L4"].flavor == "rtx" and plans["L4"].cc == "8.9" and plans["L4"].cc_from == "GPU"
    assert plans["H100"].flavor is None and "does not target compute 9.0" in plans["H100"].why
    assert plans["T4"].flavor is None and "--rtx-turing" in plans["T4"].why
    assert plans["orin"].cc == "8.7" and plans["orin"].cc_from == "known kinds" and plans["orin"].flavor is None
    assert not plans["odd"].runnable and f"{CC_LABEL}=X.Y" in plans["odd"].why  # an unknown kind, refused by name
    assert not plans["A10G"].runnable and "resnetx 0.0.9" in plans["A10G"].why
    assert plans["cpu"].runnable and plans["cpu"].flavor is None and "CPU target" in plans["cpu"].why
    assert not plans["gone"].runnable and "no live node" in plans["gone"].why
    turing = plan_fleet(FleetOptions(folder=tmp_path, rtx_turing=True), found[2:3], "0.1.0")[0]
    assert turing.flavor == "rtx" and "SM75" in turing.why
    trt = plan_fleet(FleetOptions(folder=tmp_path, hardware_compat="same-cc"),
                     [({"ray.io/accelerator-type": "H100"}, _node("b", "NVIDIA H100", "9.0", ("tensorrt",)))],
                     "0.1.0")[0]
    assert trt.flavor == "tensorrt" and "same-cc" in trt.why


@pytest.fixture(scope="module")
def cluster():  # noqa: ANN201
    """A head and one node per kind, each labelled with its kind and the compute capability it builds for."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray not installed (pip install 'resnetx[fleet]')")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # the loopback address only
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for kind, cc in KINDS.items():
        c.add_node(num_cpus=1, labels={KIND_LABEL: kind, CC_LABEL: cc})
    c.cpu_node = c.add_node(num_cpus=1)  # no label, no GPU: the "cpu" kind
    ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def fleet_folder(cluster, default_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    folder = copy_folder(default_folder, tmp_path_factory.mktemp("fleet") / "f")
    run = run_fleet(FleetOptions(folder=folder, kinds=tuple(KINDS), samples=64, batches=(1, 4), bench=QUICK))
    assert set(run.results) == set(KINDS) and not run.not_run, run.not_run
    assert all(r.error is None for r in run.results.values()), {k: r.error for k, r in run.results.items()}
    return folder


@pytest.mark.slow
@needs_rtx
def test_three_kinds_build_verify_bench_and_merge(fleet_folder: Path, tmp_path: Path) -> None:
    """A rehearsal on one CPU host: three labelled CPU nodes build real TensorRT-RTX engines ahead of time for their
    compute capabilities, verify and bench the graphs, and the folder's merged report holds each kind with its run."""
    import json

    m = read_manifest(fleet_folder)
    assert set(m.engines) == {f"{p}.rtx-sm{cc.replace('.', '')}" for p in ("fp32", "fp16", "int8")
                              for cc in KINDS.values()}
    assert audit_folder(fleet_folder).intact and all(e.gpu is None for e in m.engines.values())  # ahead of time
    for kind in KINDS:
        v = json.loads((fleet_folder / "reports" / kind / "verify.json").read_text())
        assert v["kind"] == kind and v["samples"] == 64
        rows = {r["artifact"]: r for r in v["rows"]}
        assert all(rows[p]["passed"] for p in ("fp32", "fp16", "int8"))  # the graphs, with onnxruntime CPU
        engines = [r for name, r in rows.items() if "." in name]
        assert engines and all("not run: no GPU on node" in r["skipped"] for r in engines)
        assert (fleet_folder / "reports" / kind / "bench.json").is_file()
    kinds_judged = {(r.artifact, r.kind) for r in read_verdicts(fleet_folder)}
    assert {("int8", k) for k in KINDS} <= kinds_judged
    report = json.loads((fleet_folder / "reports" / "fleet.json").read_text())
    assert set(report["kinds"]) == set(KINDS) and all(r["resnetx"] and r["when"] for r in report["kinds"].values())
    assert set(report["ship"]) == set(KINDS) and "not run there" in report["ship"]["L4"]
    assert "## Parity between kinds" in (fleet_folder / "reports" / "fleet.md").read_text()


@pytest.mark.slow
@needs_rtx
def test_the_parity_matrix_compares_each_kinds_own_logits(fleet_folder: Path, tmp_path: Path) -> None:
    """On one host the kinds run the same graphs on the same CPU, so they agree exactly; the matrix is read from each
    kind's own logits, so a kind that answered differently shows in it, and one whose logits cannot be read is
    named, not dropped in silence."""
    import numpy as np

    from pipeline.fleet.report import merge_reports

    folder = copy_folder(fleet_folder, tmp_path / "f")
    plans = plan_fleet(FleetOptions(folder=folder, kinds=tuple(KINDS)), [], "0")
    same = merge_reports(folder, plans, {})
    assert len(same.parity) == 9 and all(p["top1_agreement"] == 1.0 for p in same.parity) and not same.unreadable
    path = folder / "reports" / "L4" / "fleet-logits.npz"
    with np.load(path) as z:
        logits = {k: z[k] for k in z.files}
    rng = np.random.default_rng(0)
    logits["int8"] = logits["int8"] + rng.normal(0, 5, logits["int8"].shape).astype(np.float32)
    np.savez(path, **logits)
    (folder / "reports" / "A10G" / "fleet-logits.npz").write_bytes(b"PK\x03\x04 truncated")
    moved = merge_reports(folder, plans, {})
    int8 = [p for p in moved.parity if p["precision"] == "int8"]
    assert len(int8) == 1 and int8[0]["top1_agreement"] < 0.9 and {int8[0]["kind_a"], int8[0]["kind_b"]} == {
        "L4", "RTX5090"}
    assert set(moved.unreadable) == {"A10G"} and "fleet-logits.npz cannot be read" in moved.unreadable["A10G"]
    assert set(moved.kinds) == set(KINDS)  # its other results stay in the report


@pytest.mark.slow
@needs_rtx
def test_a_run_over_a_subset_keeps_every_kind_and_names_the_missing_one(cluster, fleet_folder: Path,  # noqa: ANN001
                                                                       tmp_path: Path) -> None:
    import json

    from tests.test_cli import invoke

    folder = copy_folder(fleet_folder, tmp_path / "f")
    r = invoke("fleet", folder, "--kinds", "L4,T4", "--samples", "64", "--batch", "1", "--iters", "2",
               "--min-seconds", "0")
    assert r.exit_code == 1 and "T4" in r.output.splitlines()[-1], r.output  # named in the last line
    report = json.loads((folder / "reports" / "fleet.json").read_text())
    assert set(report["kinds"]) == set(KINDS)  # the folder's kinds, not the last run's
    assert "no live node of kind T4" in report["not_run"]["T4"] and report["ship"]["T4"].startswith("not run")
    assert "recorded by an earlier fleet run, not run again: L4" in " ".join(r.output.split())


@pytest.mark.slow
def test_the_cpu_kind_runs_on_its_cpu_node_with_the_cpu_runtimes(cluster, default_folder: Path,  # noqa: ANN001
                                                                 tmp_path: Path) -> None:
    import json

    folder = copy_folder(default_folder, tmp_path / "f")
    run = run_fleet(FleetOptions(folder=folder, kinds=("cpu",), samples=64, batches=(1,), bench=QUICK))
    result = run.results["cpu"]
    assert result.error is None and result.node.node_id == cluster.cpu_node.node_id  # pinned, not a GPU kind's node
    ran = {r["backend"] for r in json.loads((folder / "reports" / "cpu" / "verify.json").read_text())["rows"]}
    assert "ort" in ran and (importlib.util.find_spec("openvino") is None or "openvino" in ran), ran
    assert not any(name.endswith(" on cuda") for name in result.runtimes)


@pytest.mark.slow
def test_a_kinds_failure_keeps_the_nodes_traceback(cluster, default_folder: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """A kind whose task fails on its node (here: engines asked of a cpu-recipe int8 graph, which TensorRT's parser
    rejects) records why and the node's traceback in its report; the run says so and exits 1."""
    import json

    from pipeline.make.export import ExportOptions, export

    folder = tmp_path / "cpu-recipe"
    export(ExportOptions(out=folder, precisions=("fp32", "int8"), int8_recipe="cpu", calib_samples=64))
    run = run_fleet(FleetOptions(folder=folder, kinds=("A10G",), samples=64, batches=(1,), bench=QUICK))
    assert run.failed == ["A10G"] and "cpu recipe" in run.results["A10G"].error
    record = json.loads((folder / "reports" / "A10G" / "fleet.json").read_text())
    assert "Traceback (most recent call last)" in record["traceback"] and "export_engines" in record["traceback"]
    assert run.report.kinds["A10G"]["error"] and "traceback" in run.report.ship["A10G"]


@pytest.mark.slow
def test_a_node_gone_before_it_answers_the_probe_is_left_out_with_a_note(cluster) -> None:  # noqa: ANN001
    """The probe asks the nodes the cluster listed; one removed meanwhile is left out with a note, no traceback."""
    import ray

    from pipeline.fleet.run import _probe_nodes

    victim = cluster.add_node(num_cpus=1, labels={KIND_LABEL: "A40", CC_LABEL: "8.6"})
    listed = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    assert victim.node_id in {n["NodeID"] for n in listed}
    cluster.remove_node(victim)  # gone between the listing and its probe
    notes: list[str] = []
    found = _probe_nodes(ray, 30.0, notes, nodes=listed)
    assert victim.node_id not in {node.node_id for _, node in found} and len(found) == len(listed) - 1
    assert len(notes) == 1 and victim.node_id[:12] in notes[0] and "left out of the plan" in notes[0], notes


@pytest.mark.slow
@needs_rtx
def test_the_merged_folder_serves_one_engine_per_compute_capability(fleet_folder: Path, tmp_path: Path) -> None:
    mc = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    from tests.test_cli import invoke

    r = invoke("triton", fleet_folder, "--out", tmp_path / "repo")
    assert r.exit_code == 0, r.output
    for p in ("fp32", "fp16", "int8"):
        cfg = text_format.Parse((tmp_path / "repo" / f"resnet20_{p}_trt" / "config.pbtxt").read_text(),
                                mc.ModelConfig())
        assert dict(cfg.cc_model_filenames) == {cc: f"model.{p}.rtx-sm{cc.replace('.', '')}.engine"
                                                for cc in KINDS.values()}
    info = " ".join(invoke("info", fleet_folder).output.split())
    assert "target A10G (compute 8.6, rtx): engines fp32.rtx-sm86, fp16.rtx-sm86, int8.rtx-sm86" in info, info


@pytest.mark.slow
@needs_rtx
def test_a_driver_started_again_redoes_only_the_kinds_not_recorded(fleet_folder: Path) -> None:
    again = run_fleet(FleetOptions(folder=fleet_folder, kinds=tuple(KINDS), samples=64, batches=(1,), bench=QUICK))
    assert again.results == {} and sorted(again.recorded) == sorted(KINDS)
    (fleet_folder / "reports" / "L4" / "fleet.json").unlink()  # as if the driver was killed before L4 landed
    third = run_fleet(FleetOptions(folder=fleet_folder, kinds=tuple(KINDS), samples=64, batches=(1,), bench=QUICK))
    assert set(third.results) == {"L4"} and sorted(third.recorded) == ["A10G", "RTX5090"]
    assert audit_folder(fleet_folder).intact


def _kill_when_running(cluster, groups: list[list], timeout: float = 240.0) -> list:  # noqa: ANN001
    """For each group of nodes, remove the first on which a fleet task has started (its scratch folder appears), as
    a dying machine would; watched all at once, so that one group's quick task is not missed while another waits.
    The nodes removed, None for a group where no task started in time."""
    import tempfile

    killed: list = [None] * len(groups)
    end = time.time() + timeout
    while time.time() < end and not all(killed):
        started = {p.name for p in Path(tempfile.gettempdir()).iterdir() if p.name.startswith("resnetx-fleet-")}
        for i, nodes in enumerate(groups):
            node = next((n for n in nodes if any(s.startswith(f"resnetx-fleet-{n.node_id[:12]}-") for s in started)),
                        None)
            if killed[i] is None and node is not None:
                cluster.remove_node(node)
                killed[i] = node
        time.sleep(0.2)
    return killed


@pytest.mark.slow
@needs_rtx
def test_a_node_that_dies_is_retried_or_reported_not_run(cluster, default_folder: Path, tmp_path: Path) -> None:  # noqa: ANN001
    twins = [cluster.add_node(num_cpus=1, labels={KIND_LABEL: "A2", CC_LABEL: "8.6"}) for _ in range(2)]
    lone = cluster.add_node(num_cpus=1, labels={KIND_LABEL: "A16", CC_LABEL: "8.6"})
    folder = copy_folder(default_folder, tmp_path / "f")
    out: dict[str, object] = {}
    opts = FleetOptions(folder=folder, kinds=("A2", "A16"), samples=64, batches=(1,), bench=QUICK, kind_timeout=60)
    worker = threading.Thread(target=lambda: out.update(run=run_fleet(opts)))
    worker.start()
    killed = _kill_when_running(cluster, [[lone], twins])
    worker.join(timeout=400)
    run = out["run"]
    assert all(killed), "a task never started"
    assert "A16" in run.not_run and "A16" not in run.results, run.not_run  # its only node died: not run, said why
    assert "A2" in run.results and run.results["A2"].error is None
    a2 = run.results["A2"].node.node_id  # retried on the other A2 node: not the one that died
    assert a2 != killed[1].node_id and a2 in {n.node_id for n in twins}
    m = read_manifest(folder)
    assert all("sm86" in name for name in m.engines) and audit_folder(folder).intact
    assert not (folder / "reports" / "A16").exists() and not list(folder.glob(".tmp-*"))  # nothing half-written
