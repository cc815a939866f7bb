"""CPU runtimes: the registry (a row added from outside reaches help, bench, memory priming and the manifest's
messages), OpenVINO against the real package (verify and bench rows, exit 3 without it, a graph it cannot compile),
and the recommendation's choice rule."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.check.recommend import Measured, recommend
from tests.conftest import copy_folder
from tests.test_cli import invoke

ROOT = Path(__file__).resolve().parents[1]
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="openvino is not installed (pip install 'resnetx[openvino]')")

FAKE_ROW = """
import json, sys
from runtimes.registry import RuntimeOption, RuntimeSpec, register
register(RuntimeSpec("fake", "tests.fake_runtime", "open_fake", "graph", ("cpu",), takes=("threads",),
                     options=(RuntimeOption("fake_level", "--fake-level", "how hard it tries", int),),
                     primer="prime", dist=("pytest",), fleet=("cpu",), help="a row added from outside"))
from typer.testing import CliRunner
from pipeline.cli import app
from pipeline.folder.audit import holdings
from pipeline.folder.manifest import read_manifest
from pipeline.fleet.node import NodeInfo, _runtimes, node_runtimes
runner = CliRunner()
for command in ("bench", "verify", "predict"):
    print("HELP", command, " ".join(runner.invoke(app, [command, "--help"], terminal_width=200).output.split()))
r = runner.invoke(app, ["bench", sys.argv[1], "--runtime", "fake", "--precision", "fp32", "--batch", "1",
                        "--iters", "2", "--warmup", "1", "--min-seconds", "0", "--threads", "1", "--fake-level", "2"],
                  terminal_width=200)
print("BENCH", r.exit_code, " ".join(r.output.split()))
r = runner.invoke(app, ["verify", sys.argv[1], "--runtime", "fake,ort", "--precision", "fp32", "--samples", "16",
                        "--fake-level", "3"], terminal_width=200)
print("VERIFY", r.exit_code, " ".join(r.output.split()))
r = runner.invoke(app, ["verify", sys.argv[1], "--samples", "16", "--fake-level", "3"], terminal_width=200)
print("REFUSED", r.exit_code, " ".join(r.output.split()))
print("HOLDS", holdings(read_manifest(sys.argv[1])))
node = NodeInfo("n", "host", "0", None, None, (), (), node_runtimes())
print("FLEET", json.dumps(_runtimes(node, "cpu")))
"""


def test_a_runtime_row_added_from_outside_reaches_help_bench_verify_the_fleet_and_the_reports(
        default_folder: Path, tmp_path: Path) -> None:
    """A runtime is its runner plus one row: its help line and its own option reach every command's help, bench and
    verify run it (with its option), a fleet node of its device runs it, the reports record its version, and no
    project module names it."""
    folder = copy_folder(default_folder, tmp_path / "f")
    log = tmp_path / "fake.log"
    env = {**os.environ, "RESNETX_FAKE_RUNTIME_LOG": str(log), "PYTHONPATH": str(ROOT), "COLUMNS": "400"}
    out = subprocess.run([sys.executable, "-c", FAKE_ROW, str(folder)], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = {" ".join(ln.split(" ", 2)[:2]) if ln.startswith("HELP") else ln.split(" ", 1)[0]:
             ln.split(" ", 2)[2] if ln.startswith("HELP") else ln.split(" ", 1)[1]
             for ln in out.stdout.splitlines() if " " in ln}
    for command in ("bench", "verify", "predict"):
        assert "fake (a row added from outside)" in lines[f"HELP {command}"]
        assert "--fake-level" in lines[f"HELP {command}"] and "fake: how hard it tries" in lines[f"HELP {command}"]
    assert lines["BENCH"].startswith("0 ") and "fake" in lines["BENCH"], lines["BENCH"]
    assert lines["VERIFY"].startswith("0 ") and "ort vs fake" in lines["VERIFY"], lines["VERIFY"]  # runtime parity
    assert lines["REFUSED"].startswith("2 ") and "--runtime fake" in lines["REFUSED"]  # its option, without it
    assert "fake" in lines["HOLDS"]  # "fp32 (ort, ..., fake)": what can run the graphs comes from the rows
    assert "fake" in json.loads(lines["FLEET"])[0]  # a CPU kind's node runs it
    calls = log.read_text().splitlines()
    assert calls[0] == "prime cpu" and any(c.startswith("open model.fp32.onnx cpu threads=1 level=2") for c in calls)
    assert any(c.startswith("open model.fp32.onnx cpu threads=None level=3") for c in calls)  # verify's option
    bench = json.loads((folder / "reports" / "cpu" / "bench.json").read_text())
    assert {r["backend"] for r in bench["rows"]} == {"fake"}  # the registry name, whatever the runner calls itself
    verify = json.loads((folder / "reports" / "cpu" / "verify.json").read_text())
    assert "pytest" in bench["system"]["versions"] and "pytest" in verify["system"]["versions"]
    fake = next(r for r in verify["rows"] if r["backend"] == "fake")
    assert fake["version"].startswith("pytest ") and fake["passed"]
    assert not [p for p in (ROOT / "pipeline").rglob("*.py") if '"fake"' in p.read_text()]  # no project module knows it


@needs_openvino
def test_openvino_verifies_and_benches_the_folders_graphs(default_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(default_folder, tmp_path / "f")
    r = invoke("verify", folder, "--runtime", "openvino,ort", "--samples", "200")
    assert r.exit_code == 0, r.output
    rows = json.loads((folder / "reports" / "cpu" / "verify.json").read_text())["rows"]
    assert {row["runtime"] for row in rows} >= {"openvino-cpu-fp32", "openvino-cpu-fp16", "openvino-cpu-int8"}
    parity = " ".join(r.output.split()).split("runtime parity on model.int8.onnx: ort vs openvino: top-1 agreement ")
    assert len(parity) == 2 and float(parity[1].split("%")[0]) >= 97.0, r.output
    fp32 = next(row for row in rows if row["runtime"] == "openvino-cpu-fp32")
    assert fp32["metrics"]["top1_agreement"] == 1.0 and fp32["metrics"]["rel_l2"] < 1e-5  # f32 hint: fp32 stays fp32
    r = invoke("bench", folder, "--runtime", "openvino,ort", "--batch", "1,8", "--iters", "3", "--warmup", "1",
               "--min-seconds", "0")
    assert r.exit_code == 0, r.output
    report = json.loads((folder / "reports" / "cpu" / "bench.json").read_text())
    ov = [row for row in report["rows"] if row["runtime"].startswith("openvino")]
    assert len(ov) == 6 and all(row["latency_ms"]["p50"] > 0 for row in ov)
    assert report["recommendations"] and report["recommendations"][0].startswith("cpu: ship model.")
    assert "recommended: cpu: ship model." in " ".join(r.output.split())


@needs_openvino
def test_openvino_and_onnxruntime_agree_on_the_same_graph(default_folder: Path) -> None:
    """The runtime-parity check: one int8 graph, two CPU runtimes, the same inputs."""
    from pipeline.folder.manifest import read_manifest
    from pipeline.model.data import open_dataset
    from runtimes.registry import open_runtime

    pre = read_manifest(default_folder).model.info.preprocess
    x = pre(open_dataset("sample", split="test").raw(np.arange(128)))
    graph = default_folder / "model.int8.onnx"
    with open_runtime("openvino", graph, precision="int8") as ov, open_runtime("ort", graph, precision="int8") as ort:
        a, b = ov.infer_all(x, 32), ort.infer_all(x, 32)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.97
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.1


def test_without_openvino_the_runtime_exits_3_with_the_pip_line(default_folder: Path, tmp_path: Path) -> None:
    script = ("import sys; sys.modules['openvino'] = None\n"
              "from typer.testing import CliRunner\nfrom pipeline.cli import app\n"
              "r = CliRunner().invoke(app, ['verify', sys.argv[1], '--runtime', 'openvino', '--samples', '16'])\n"
              "print(r.exit_code, ' '.join(r.output.split()))")
    folder = copy_folder(default_folder, tmp_path / "f")
    out = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert out.stdout.startswith("3 ") and "pip install openvino" in out.stdout, out.stdout + out.stderr


@needs_openvino
def test_a_graph_openvino_cannot_compile_is_one_line(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, save

    from resnetx.errors import BadInput
    from runtimes.registry import open_runtime

    node = helper.make_node("NoSuchOp", ["input"], ["logits"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)]),
         str(tmp_path / "bad.onnx"))
    with pytest.raises(BadInput) as e:
        open_runtime("openvino", tmp_path / "bad.onnx")
    assert "\n" not in str(e.value) and "bad.onnx" in str(e.value) and "NoSuchOp" in str(e.value)


def _m(runtime: str, precision: str, batch: int, ips: float, top1: float | None = 90.0, device: str = "cpu",
       artifact: str | None = None) -> Measured:
    return Measured(artifact or precision, f"model.{precision}.onnx", runtime, precision, device, batch, ips, top1)


def test_the_recommendation_is_the_fastest_row_that_passes() -> None:
    bars = {"fp32": None, "fp16": None, "int8": 0.5}
    rows = [_m("ort", "fp32", 1, 100), _m("ort", "fp32", 32, 400), _m("openvino", "int8", 32, 900, 89.6),
            _m("ort", "int8", 32, 1200, 88.0)]  # the fastest row drops 2 points: never recommended
    assert recommend(rows, bars) == ["cpu: ship model.int8.onnx on openvino: 2.25x ort fp32 at batch 32, -0.40 pt"]
    failing = recommend(rows, bars, failing={"int8"})  # a failing verdict rules a row out whatever its speed
    assert failing[0] == "cpu: ship model.fp32.onnx on ort: 1.00x ort fp32 at batch 32, +0.00 pt"
    assert failing[1] == "cpu: int8 does not pay here: no int8 row passes its accuracy bar and verdict"
    slow = recommend([_m("ort", "fp32", 8, 500), _m("ort", "int8", 8, 450, 89.9)], bars)
    assert slow[1].startswith("cpu: int8 does not pay here: its fastest row (ort, batch 8) runs at 0.90x")
    two = recommend([_m("ort", "fp32", 1, 10), _m("ort", "fp32", 1, 50, device="cuda")], bars)
    assert [ln.split(":")[0] for ln in two] == ["cpu", "cuda"]  # one line per device


def test_a_cpu_recipe_records_its_isa_and_warns_on_another(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.machine as machine
    from pipeline.folder.manifest import read_manifest
    from pipeline.make.export import ExportOptions, export
    from pipeline.precisions import Precision

    folder = tmp_path / "c"
    export(ExportOptions(out=folder, precisions=(Precision.fp32, Precision.int8), int8_recipe="cpu",
                         calib_samples=64, reference_samples=64))
    cal = read_manifest(folder).calibration
    assert cal.recipe == "cpu" and cal.isa == machine.cpu_isa()  # the CPU it was made on, read back as written
    r = invoke("verify", folder, "--samples", "32")
    assert r.exit_code == 0 and "int8 saturation differs" not in r.output  # same CPU: nothing to say
    other = ("avx2", "avx512f", "avx512_vnni") if "avx512_vnni" not in cal.isa else ("avx2",)
    monkeypatch.setattr(machine, "cpu_isa", lambda: other)
    for args in (("verify", folder, "--samples", "32"),
                 ("bench", folder, "--runtime", "ort", "--batch", "1", "--iters", "2", "--min-seconds", "0")):
        text = " ".join(invoke(*args).output.split())
        assert "int8 saturation differs" in text and ", ".join(sorted(set(other) - {"avx2"})) in text, text
    assert machine.isa_mismatch(("avx2",), "tensorrt") is None  # the TensorRT recipe does not run on CPU kernels


def test_without_int8_dot_products_the_cpu_recipe_uses_7_bit_weights(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's remedy for u8 x s8 saturation on CPUs without VNNI, chosen from the CPU export runs on; verify
    --localize ranks layers on trial graphs laid out for the CPU the graph was made for, not the one it runs on."""
    import onnx
    from onnx import numpy_helper

    import exporters.quantize as quantize
    import pipeline.make.graphs as graphs
    from pipeline.check.verify import VerifyOptions, verify
    from pipeline.folder.manifest import read_manifest
    from pipeline.make.export import ExportOptions, export
    from pipeline.precisions import Precision

    def widest_int8_weight(folder: Path, file: str = "model.int8.onnx") -> int:
        g = onnx.load(str(folder / file)).graph
        return max(int(np.abs(numpy_helper.to_array(i).astype(np.int32)).max()) for i in g.initializer
                   if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4)

    monkeypatch.setattr(graphs, "cpu_isa", lambda: ("avx2",))
    opts = dict(precisions=(Precision.fp32, Precision.int8), int8_recipe="cpu", calib_samples=32, reference_samples=0)
    export(ExportOptions(out=tmp_path / "avx2", **opts))
    monkeypatch.setattr(graphs, "cpu_isa", lambda: ("avx2", "avx512f", "avx512_vnni"))
    export(ExportOptions(out=tmp_path / "vnni", **opts))
    assert widest_int8_weight(tmp_path / "avx2") <= 64 < widest_int8_weight(tmp_path / "vnni")
    details = read_manifest(tmp_path / "avx2").graphs[Precision.int8].details
    assert "7-bit (reduce_range)" in details["weights"]
    assert read_manifest(tmp_path / "avx2").calibration.isa == ("avx2",)

    trials: list[int] = []  # the widest weight of each graph localize ranks on, here on a VNNI CPU
    real = quantize.quantize_int8

    def spy(src: Path, dst: Path, *args: object, **kwargs: object) -> object:
        made = real(src, dst, *args, **kwargs)
        trials.append(widest_int8_weight(Path(dst).parent, Path(dst).name))
        return made

    monkeypatch.setattr(quantize, "quantize_int8", spy)
    r = verify(VerifyOptions(folder=tmp_path / "avx2", samples=32, precisions=("int8",), localize=True))
    assert r.rows[0].localization.revert_first and len(trials) >= 10 and max(trials) <= 64


@needs_openvino
def test_openvino_splits_a_batch_over_its_infer_requests_in_order(default_folder: Path) -> None:
    """Above batch 1 the batch is shared out over the compiled model's infer requests, run at once (every stream
    busy); the outputs come back in the batch's order, as one request per image gives them."""
    from pipeline.folder.manifest import read_manifest
    from pipeline.model.data import open_dataset
    from runtimes.registry import open_runtime

    pre = read_manifest(default_folder).model.info.preprocess
    x = pre(open_dataset("sample", split="test").raw(np.arange(9)))
    with open_runtime("openvino", default_folder / "model.fp32.onnx", precision="fp32") as rt:
        whole = rt.infer(x)
        one = np.concatenate([rt.infer(x[i : i + 1]) for i in range(len(x))])
        assert rt.requests >= 1
    np.testing.assert_allclose(whole, one, rtol=1e-4, atol=1e-4)
    assert (whole.argmax(1) == one.argmax(1)).all()


@needs_openvino
def test_the_anchor_names_the_layers_an_int8_graph_keeps_in_float(default_folder: Path, tmp_path: Path) -> None:
    """scripts/openvino_anchor.py reads OpenVINO's own per-layer counters (benchmark_app) to say where two int8
    models differ: the float stem conv is named in a default int8 graph and gone with --int8-quantize-ends."""
    import importlib.util

    from pipeline.folder.manifest import read_manifest
    from pipeline.make.export import ExportOptions, export
    from pipeline.precisions import Precision

    spec = importlib.util.spec_from_file_location("openvino_anchor", ROOT / "scripts" / "openvino_anchor.py")
    anchor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(anchor)
    m = read_manifest(default_folder)
    shape = m.model.info.input_shape
    kept = anchor.float_layers(default_folder / m.graphs["int8"].file, shape, 1)
    assert any("Convolution" in layer for layer in kept) and any("FullyConnected" in layer for layer in kept), kept
    ends = tmp_path / "ends"
    export(ExportOptions(out=ends, precisions=(Precision.fp32, Precision.int8), calib_samples=64,
                         reference_samples=32, int8_quantize_ends=True))
    quantized = anchor.float_layers(ends / read_manifest(ends).graphs["int8"].file, shape, 1)
    assert not any("Convolution" in layer for layer in quantized), quantized
