"""Which runtime runs which artifact where: one selection for verify and bench, and the registry behind it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.check.candidates import default_runtimes, open_candidate, select_candidates
from pipeline.check.reference import Reference
from pipeline.folder.manifest import Manifest, read_manifest
from pipeline.precisions import Precision
from resnetx.errors import BackendUnavailable, BadInput, IncompatibleArtifact
from tests.conftest import V1_FOLDER

V1_RTX = Path(__file__).with_name("data") / "v1_manifests" / "rtx_engines.json"


RTX = "rtx-sm80-sm86-sm89-sm120"  # the portable TensorRT-RTX target: its engines' names carry it


def _pairs(targets: list) -> list[tuple[str, str, str]]:
    return [(t.key, t.runtime.name, t.device) for t in targets]


def test_defaults_per_command_and_device() -> None:
    assert default_runtimes("verify", "cpu") == ("ort",)
    assert default_runtimes("verify", "cuda") == ("ort", "trt")
    assert default_runtimes("bench", "cpu") == ("torch", "ort")
    assert default_runtimes("bench", "cuda") == ("torch", "ort", "trt")  # ort-trt only on request


def test_graphs_engines_and_the_model_each_get_their_runtime() -> None:
    m = Manifest.from_dict(json.loads(V1_RTX.read_text()))
    verify = select_candidates(m, Path("f"), command="verify", runtimes=("ort", "trt", "torch"), precisions=None,
                            device="cpu")
    assert _pairs(verify) == [("fp32", "ort", "cpu"), ("fp16", "ort", "cpu"), ("int8", "ort", "cpu"),
                              (f"fp32.{RTX}", "trt", "cuda"), (f"fp16.{RTX}", "trt", "cuda"),
                              (f"int8.{RTX}", "trt", "cuda"),
                              ("torch-fp32", "torch", "cpu"), ("torch-fp16", "torch", "cpu")]
    bench = select_candidates(m, Path("f"), command="bench", runtimes=("torch",), precisions=None, device="cpu")
    assert _pairs(bench) == [("torch-fp32", "torch", "cpu")]  # fp16 on a CPU is emulated: parity, not speed
    fp16 = select_candidates(m, Path("f"), command="bench", runtimes=None, precisions=(Precision.fp16,), device="cuda")
    assert _pairs(fp16) == [("fp16", "ort", "cuda"), (f"fp16.{RTX}", "trt", "cuda"), ("torch-fp16", "torch", "cuda")]


def test_nothing_to_run_says_what_the_folder_holds() -> None:
    m = read_manifest(V1_FOLDER)
    with pytest.raises(BadInput, match=r"nothing to benchmark in f for precision\(s\) fp16 .*it holds fp32 \(ort, "
                                       r"ort-trt, openvino\), int8 \(ort, ort-trt, openvino\)"):
        select_candidates(m, Path("f"), command="bench", runtimes=("ort",), precisions=(Precision.fp16,), device="cpu")
    with pytest.raises(BadInput, match="unknown runtime 'tvm'"):
        select_candidates(m, Path("f"), command="verify", runtimes=("tvm",), precisions=None, device="cpu")
    with pytest.raises(BadInput, match="--runtime ort-trt .* needs --device cuda"):
        select_candidates(m, Path("f"), command="bench", runtimes=("ort-trt",), precisions=None, device="cpu")


def test_the_torch_target_without_its_weights_says_why(tmp_path: Path) -> None:
    m = read_manifest(V1_FOLDER)
    t = select_candidates(m, V1_FOLDER, command="verify", runtimes=("torch",), precisions=(Precision.fp32,),
                       device="cpu")[0]
    gone = Reference(m.model.info, m.model.state_sha256, None, "the reference weights /x.pth are not on this machine")
    with pytest.raises(BackendUnavailable, match="runs the PyTorch model: the reference weights /x.pth are not"):
        open_candidate(t, V1_FOLDER, m, gone)


def test_an_engine_for_another_gpu_says_how_to_rebuild_it_here(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.check.candidates

    m = Manifest.from_dict(json.loads(V1_RTX.read_text()))
    t = next(t for t in select_candidates(m, Path("/a/f"), command="verify", runtimes=("trt",), precisions=None,
                                       device="cuda") if t.key == "fp16.rtx-sm80-sm86-sm89-sm120")

    def sm90(name: str, path: Path, **kw: object) -> None:
        raise IncompatibleArtifact("model.fp16.rtx.engine targets compute capabilities 8.0; this GPU is 9.0",
                                   gpu_cc="9.0")

    monkeypatch.setattr(pipeline.check.candidates, "checked_file", lambda folder, entry: Path(folder) / entry.file)
    monkeypatch.setattr(pipeline.check.candidates, "open_runtime", sm90)
    with pytest.raises(IncompatibleArtifact) as e:
        open_candidate(t, Path("/a/f"), m, Reference(m.model.info, m.model.state_sha256, None, "n/a"))
    assert str(e.value).endswith("rebuild it here with: resnetx export --out /a/f --engines-only --engine tensorrt "
                                 "--precision fp16 --batch-range 1,32,256 --force")
