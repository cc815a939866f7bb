"""Bring your own model: an ONNX file (foreign I/O names, a fixed batch, external data, NHWC) or a safetensors
checkpoint as the export's source; verified against the file itself on onnxruntime; what is refused."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from exporters.onnx import run_cpu
from pipeline.folder.audit import audit_folder
from pipeline.folder.manifest import read_manifest
from pipeline.model.zoo import load_model
from pipeline.precisions import Precision
from pipeline.sources import ModelSpec
from tests.conftest import needs_rtx, save_safetensors
from tests.test_cli import invoke

MEAN, STD = "0.2854", "0.3526"  # the default model's, as a user would give them


def _torch_export(path: Path, *, batch: int | None = None, nhwc: bool = False, external: bool = False) -> Path:
    """The default model exported by a plain torch.onnx.export, with its own I/O names (as training code does)."""
    model, _ = load_model(ModelSpec("default"))

    class Nhwc(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.permute(0, 3, 1, 2))

    net = Nhwc() if nhwc else model
    shape = (batch or 1, 28, 28, 1) if nhwc else (batch or 1, 1, 28, 28)
    axes = None if batch else {"pixel_values": {0: "n"}, "output0": {0: "n"}}
    torch.onnx.export(net.eval(), (torch.zeros(shape),), str(path), dynamo=False, input_names=["pixel_values"],
                      output_names=["output0"], dynamic_axes=axes)
    if external:
        m = onnx.load(str(path))
        onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    return path


@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("onnx")
    src = _torch_export(root / "foreign.onnx")
    out = root / "f"
    r = invoke("export", "--onnx", src, "--mean", MEAN, "--std", STD, "--precision", "fp32,fp16,int8", "--out", out,
               "--calib-samples", "128", "--reference-samples", "64")
    assert r.exit_code == 0, r.output
    return src, out


def test_an_onnx_file_exports_verifies_and_benches(onnx_folder: tuple[Path, Path]) -> None:
    src, out = onnx_folder
    m = read_manifest(out)
    assert set(m.graphs) == {Precision.fp32, Precision.fp16, Precision.int8} and audit_folder(out).intact
    fp32 = m.graphs[next(iter(m.graphs))]
    assert fp32.details["source_input"] == "pixel_values" and fp32.details["source_output"] == "output0"
    g = onnx.load(str(out / fp32.file))
    assert [i.name for i in g.graph.input] == ["input"] and [o.name for o in g.graph.output] == ["logits"]
    x = np.random.default_rng(0).standard_normal((5, 1, 28, 28)).astype(np.float32)
    import onnxruntime as ort

    given = ort.InferenceSession(str(src)).run(None, {"pixel_values": x})[0]
    assert np.array_equal(run_cpu(out / fp32.file, x), given)  # the fp32 graph is the file, renamed
    r = invoke("verify", out, "--samples", "64")
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "vs onnx-cpu-fp32 (onnxruntime)" in text and "stored reference logits" in text, text
    v = json.loads((out / "reports" / "cpu" / "verify.json").read_text())
    rows = {row["artifact"]: row for row in v["rows"]}
    assert rows["fp32"]["metrics"]["max_abs"] == 0.0 and rows["int8"]["passed"]
    assert v["reference"] == "onnx-cpu-fp32 (onnxruntime)"
    b = invoke("bench", out, "--batch", "1,4", "--iters", "3", "--min-seconds", "0", "--rounds", "1")
    assert b.exit_code == 0 and "ort-cpu-int8" in b.output, b.output
    assert "torch-cpu-fp32" in b.output and "not a PyTorch model" in " ".join(b.output.split())
    bench = json.loads((out / "reports" / "cpu" / "bench.json").read_text())
    assert bench["gflops_per_image"] == pytest.approx(_torch_gflops(), rel=1e-3)  # counted in the graph: no torch


def _torch_gflops() -> float:
    """The default model's FLOPs per image counted on the PyTorch module itself (2 x multiply-adds of each conv and
    linear layer, from the shapes its forward pass sees): an independent count of what bench reads from the graph."""
    model, info = load_model(ModelSpec("default"))
    macs = []

    def hook(mod: torch.nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        if isinstance(mod, torch.nn.Conv2d):
            macs.append(out[0].numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1])
        elif isinstance(mod, torch.nn.Linear):
            macs.append(mod.in_features * mod.out_features)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(torch.zeros(1, *info.input_shape))
    for h in handles:
        h.remove()
    return 2 * sum(macs) / 1e9


def test_static_batch_is_refused_for_an_onnx_source_whatever_the_cache_holds(onnx_folder: tuple[Path, Path],
                                                                             tmp_path: Path) -> None:
    """--static-batch does not apply to --onnx (the file keeps its own batch): refused in the options, before the
    cache is looked at, so a cached re-export cannot size engines with it either."""
    import shutil

    src, out = onnx_folder
    folder = tmp_path / "f"
    shutil.copytree(out, folder)
    before = (folder / "manifest.json").read_bytes()
    r = invoke("export", "--onnx", src, "--mean", MEAN, "--std", STD, "--precision", "fp32", "--static-batch", "4",
               "--out", folder)
    assert r.exit_code == 2 and "--static-batch does not apply to --onnx" in r.output, r.output
    assert (folder / "manifest.json").read_bytes() == before


def test_the_remake_line_makes_the_same_graphs_and_triton_serves_them(onnx_folder: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    mc = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    _, out = onnx_folder
    info = invoke("info", out)
    line = next(x for x in info.output.splitlines() if x.startswith("re-make with: ")).removeprefix("re-make with: ")
    assert "--onnx" in line and "--model" not in line and "--opset" not in line, line
    args = shlex.split(line)[1:]
    args[args.index("--out") + 1] = str(tmp_path / "again")
    assert invoke(*args, "--reference-samples", "0").exit_code == 0
    made, again = read_manifest(out), read_manifest(tmp_path / "again")
    assert {e.name: e.sha256 for e in again.graphs.values()} == {e.name: e.sha256 for e in made.graphs.values()}
    r = invoke("triton", out, "--out", tmp_path / "repo", "--allow-unverified")
    assert r.exit_code == 0, r.output
    cfg = text_format.Parse((tmp_path / "repo" / "foreign_int8_onnx" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert cfg.max_batch_size > 0 and cfg.input[0].name == "input" and list(cfg.input[0].dims) == [1, 28, 28]


@needs_rtx
def test_a_fixed_batch_onnx_keeps_its_batch_everywhere(tmp_path: Path) -> None:
    mc = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    src = _torch_export(tmp_path / "b4.onnx", batch=4)
    out = tmp_path / "f"
    r = invoke("export", "--onnx", src, "--mean", MEAN, "--std", STD, "--precision", "fp32,fp16", "--engine", "rtx",
               "--rtx-compute-capability", "SM89", "--out", out, "--reference-samples", "20")
    assert r.exit_code == 0, r.output
    m = read_manifest(out)
    assert {g.static_batch for g in m.graphs.values()} == {4}
    assert all(e.profile == (4, 4, 4) for e in m.engines.values()) and len(m.engines) == 2
    assert invoke("verify", out, "--samples", "20").exit_code == 0
    assert invoke("triton", out, "--out", tmp_path / "repo").exit_code == 0
    cfg = text_format.Parse((tmp_path / "repo" / "b4_fp16_trt" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [4, 1, 28, 28]


def test_external_data_and_nhwc_inputs_are_read(tmp_path: Path) -> None:
    ext = _torch_export(tmp_path / "ext.onnx", external=True)
    assert (tmp_path / "ext.onnx.data").stat().st_size > 1_000_000 and ext.stat().st_size < 100_000
    r = invoke("export", "--onnx", ext, "--mean", MEAN, "--std", STD, "--out", tmp_path / "e", "--reference-samples",
               "16")
    assert r.exit_code == 0, r.output
    fp32 = read_manifest(tmp_path / "e").graphs
    g = tmp_path / "e" / fp32[next(iter(fp32))].file
    assert g.stat().st_size > 1_000_000  # the weights came along, inside the copy
    nhwc = _torch_export(tmp_path / "nhwc.onnx", nhwc=True)
    r = invoke("export", "--onnx", nhwc, "--mean", MEAN, "--std", STD, "--out", tmp_path / "n", "--precision",
               "fp32,int8", "--calib-samples", "64", "--reference-samples", "16")
    assert r.exit_code == 0, r.output
    m = read_manifest(tmp_path / "n")
    assert m.graphs[next(iter(m.graphs))].details["source_layout"] == "NHWC" and m.model.info.in_chans == 1
    v = invoke("verify", tmp_path / "n", "--samples", "16")
    assert v.exit_code == 0, v.output  # the reference is the NHWC file, fed transposed inputs


def test_what_is_not_an_image_classifier_is_refused_and_nothing_written(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    def write(name: str, inputs: list, outputs: list, nodes: list) -> Path:
        g = helper.make_graph(nodes, "g", inputs, outputs)
        path = tmp_path / name
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return path

    t = helper.make_tensor_value_info
    two = write("two.onnx", [t("a", TensorProto.FLOAT, [1, 3, 8, 8]), t("b", TensorProto.FLOAT, [1, 3, 8, 8])],
                [t("y", TensorProto.FLOAT, [1, 3, 8, 8])], [helper.make_node("Add", ["a", "b"], ["y"])])
    tokens = write("tokens.onnx", [t("ids", TensorProto.FLOAT, [1, 128])], [t("y", TensorProto.FLOAT, [1, 128])],
                   [helper.make_node("Relu", ["ids"], ["y"])])
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage that is not protobuf")
    good = _torch_export(tmp_path / "good.onnx")
    cases = [(two, "must have one image input and one logits output"), (tokens, "rank-4 image batch"),
             (corrupt, "not a readable ONNX model")]
    for path, words in cases:
        out = tmp_path / f"out-{path.stem}"
        r = invoke("export", "--onnx", path, "--mean", "0.5", "--std", "0.5", "--out", out)
        assert r.exit_code == 2 and words in " ".join(r.output.split()), r.output
        assert not out.exists()
    r = invoke("export", "--onnx", good, "--out", tmp_path / "nopre")
    assert r.exit_code == 2 and "records no preprocessing: give --mean and --std" in " ".join(r.output.split())
    assert not (tmp_path / "nopre").exists()
    r = invoke("export", "--onnx", good, "--model", "resnet18", "--mean", "0.5", "--std", "0.5")
    assert r.exit_code == 2 and "--onnx is the model: --model" in r.output


def test_a_safetensors_checkpoint_makes_the_same_graph_as_its_pt_form(tmp_path: Path) -> None:
    from pipeline.model.zoo import DEFAULT_WEIGHTS, load_state_dict

    model, info = load_model(ModelSpec("resnet20", weights=DEFAULT_WEIGHTS))
    _, meta = load_state_dict(DEFAULT_WEIGHTS)
    save_safetensors(tmp_path / "w.safetensors", model, meta)
    shas = {}
    for name, weights in (("pt", DEFAULT_WEIGHTS), ("st", tmp_path / "w.safetensors")):
        r = invoke("export", "--model", "resnet20", "--weights", weights, "--out", tmp_path / name,
                   "--reference-samples", "0")
        assert r.exit_code == 0, r.output
        shas[name] = read_manifest(tmp_path / name).graphs[next(iter(read_manifest(tmp_path / name).graphs))].sha256
    assert shas["pt"] == shas["st"]
    foreign = {k.replace("conv1.weight", "conv1.0.weight", 1) if k == "conv1.weight" else k: v
               for k, v in model.state_dict().items()}  # a deep stem's key, as timm's ResNet-D has
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in foreign.items()}, str(tmp_path / "d.safetensors"))
    r = invoke("export", "--model", "resnet20", "--weights", tmp_path / "d.safetensors", "--out", tmp_path / "d")
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "keys of another architecture" in text and "conv1.0.weight" in text, text
    assert "--onnx" in text and not (tmp_path / "d").exists()


def test_the_accuracy_search_works_on_an_onnx_source(onnx_folder: tuple[Path, Path], tmp_path: Path) -> None:
    src, _ = onnx_folder
    out = tmp_path / "s"
    names = tmp_path / "names.txt"
    from pipeline.model.data import FASHION_MNIST_CLASSES

    names.write_text("\n".join(FASHION_MNIST_CLASSES) + "\n")
    r = invoke("export", "--onnx", src, "--mean", MEAN, "--std", STD, "--class-names", names, "--precision",
               "fp32,int8", "--max-accuracy-drop", "0.5", "--calib-samples", "128", "--accuracy-samples", "300",
               "--out", out, "--reference-samples", "0")
    assert r.exit_code == 0, r.output
    s = read_manifest(out).graphs[list(read_manifest(out).graphs)[-1]].search
    assert s is not None and s.met and s.images == 300
