"""Hostile and broken inputs, killed and concurrent exports: the folder is never half-trusted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.folder.manifest import read_manifest
from pipeline.model.data import Preprocess, read_idx
from pipeline.model.zoo import load_state_dict
from resnetx.errors import BadInput, ResnetxError
from resnetx.files import file_sha256

ROOT = Path(__file__).resolve().parents[1]
EXPORT = [sys.executable, "-m", "pipeline.cli", "export", "--precision", "fp32,fp16,int8", "--exporter", "legacy",
          "--calib-samples", "128"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _consistent(folder: Path) -> str:
    """'incomplete' (no manifest, and commands say so) or 'complete' (every file matches)."""
    if not (folder / "manifest.json").exists():
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", str(folder)], env=_env(),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stdout + r.stderr
        return "incomplete"
    m = read_manifest(folder)
    for entry in m.entries():
        assert file_sha256(folder / entry.file) == entry.sha256, entry.file
    return "complete"


@pytest.mark.slow
def test_sigkill_during_export_never_leaves_a_trusted_half_folder(tmp_path: Path) -> None:
    folder = tmp_path / "a"
    seen = set()
    rng = np.random.default_rng(0)
    for delay in [*rng.uniform(1.0, 8.0, 4), 60.0]:
        p = subprocess.Popen([*EXPORT, "--out", str(folder), "--force"], env=_env(), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
        seen.add(_consistent(folder))
    assert "complete" in seen  # the last run was given time to finish
    r = subprocess.run([*EXPORT, "--out", str(folder)], env=_env(), cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert not list(folder.glob(".tmp-*"))  # leftovers of killed runs are cleaned
    assert _consistent(folder) == "complete"


@pytest.mark.slow
def test_two_concurrent_exports_into_one_folder(tmp_path: Path) -> None:
    folder = tmp_path / "b"
    procs = [subprocess.Popen([*EXPORT, "--out", str(folder)], env=_env(), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert _consistent(folder) == "complete"
    statuses = sorted(out[0].count("cached") for out in outs)
    assert statuses[0] == 0 and statuses[1] >= 3  # the second waited for the lock, then reused the work


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_checkpoint(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "x.pth"
    p.write_bytes(data)
    with pytest.raises(BadInput):
        load_state_dict(p)


@FUZZ
@given(data=st.binary(max_size=4096), gz=st.booleans())
def test_random_bytes_idx(tmp_path: Path, data: bytes, gz: bool) -> None:
    import gzip

    p = tmp_path / ("x.gz" if gz else "x")
    p.write_bytes(gzip.compress(data) if gz and data[:1] == b"\0" else data)
    try:
        a = read_idx(p)
    except BadInput:
        return
    assert a.dtype == np.uint8


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes_onnx(tmp_path: Path, data: bytes) -> None:
    from exporters.onnx import check_onnx, load_onnx

    p = tmp_path / "x.onnx"
    p.write_bytes(data)
    with pytest.raises(ResnetxError):
        check_onnx(load_onnx(p))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(1, 40), w=st.integers(1, 40), c=st.sampled_from([1, 2, 3, 4]),
       size=st.integers(4, 32), channels=st.sampled_from([1, 3]))
def test_preprocess_random_shapes(n: int, h: int, w: int, c: int, size: int, channels: int) -> None:
    pre = Preprocess(image_size=size, resize=size, channels=channels, mean=(0.5,) * channels, std=(0.5,) * channels)
    img = np.zeros((n, h, w, c), np.uint8)
    try:
        x = pre(img)
    except BadInput as e:
        assert "channels" in str(e)
        return
    assert x.shape == (n, channels, size, size) and np.isfinite(x).all()


def test_random_bytes_engine_never_deserialized_without_gpu(tmp_path: Path) -> None:
    import torch

    from resnetx.errors import BackendUnavailable
    from resnetx.flavors import EngineTarget, Flavor
    from runtimes.registry import open_runtime

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    (tmp_path / "m.engine").write_bytes(os.urandom(1000))
    target = EngineTarget(Flavor.rtx, "0", "fp32", (1, 1, 1))
    with pytest.raises(BackendUnavailable):
        open_runtime("trt", tmp_path / "m.engine", device="cuda", target=target)


def test_images_with_wrong_channel_count(default_folder: Path) -> None:
    from pipeline.check.verify import VerifyOptions, verify

    with pytest.raises(BadInput, match="images have 4 channels"):
        Preprocess(image_size=28, resize=28, channels=1, mean=(0.0,), std=(1.0,))(np.zeros((1, 28, 28, 4), np.uint8))
    with pytest.raises(BadInput, match="--samples"):
        verify(VerifyOptions(folder=default_folder, samples=0), record=False)


def test_image_size_the_model_cannot_take() -> None:
    from pipeline.model.zoo import load_model
    from pipeline.sources import ModelSpec

    with pytest.raises(BadInput, match="--image-size 16 is too small for resnet50"):
        load_model(ModelSpec("resnet50", image_size=16))


def test_batch_outside_profile_is_refused_before_running() -> None:
    from runtimes.base import Runtime

    class Probe(Runtime):
        backend = "probe"
        ran = False

        def _infer(self, batch: np.ndarray) -> np.ndarray:
            self.ran = True
            return batch

    rt = Probe(device="cuda", precision="fp16", batch_range=(1, 64))
    with pytest.raises(BadInput, match="batch 65 is outside the range 1..64"):
        rt.infer(np.zeros((65, 1, 2, 2), np.float32))
    assert not rt.ran
    rt.infer(np.zeros((64, 1, 2, 2), np.float32))
    assert rt.ran
