"""int8 graphs: the Q/DQ layout per recipe, kept layers as groups, bias correction, calibration; fp16 graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from exporters.calibrate import CalibMethod, Ranges, calibrate, calibrate_methods
from exporters.fp16 import layers_to_fp16, to_fp16
from exporters.quantize import (
    apply_shifts,
    bias_shifts,
    int8_graph,
    quantize_int8,
    quantized_layers,
    revert_layers,
    revertible,
)
from resnetx.errors import BadInput
from tests.conftest import sample_batches


def _calib(folder: Path, n: int = 128):  # noqa: ANN202
    return sample_batches(n)


def _io_types(m: onnx.ModelProto) -> tuple[int, int]:
    return m.graph.input[0].type.tensor_type.elem_type, m.graph.output[0].type.tensor_type.elem_type


def test_fp16_keeps_fp32_io_and_halves_size(graphs: Path, tmp_path: Path) -> None:
    a = to_fp16(graphs / "model.fp32.onnx", tmp_path / "m16.onnx")
    m = onnx.load(str(a.path))
    assert _io_types(m) == (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT)
    conv_w = [i for i in m.graph.initializer if i.name.endswith("conv1.weight")]
    assert conv_w and all(i.data_type == onnx.TensorProto.FLOAT16 for i in conv_w)
    assert a.size_bytes < 0.6 * (graphs / "model.fp32.onnx").stat().st_size


def test_fp16_keep_fp32_layer(graphs: Path, tmp_path: Path) -> None:
    a = to_fp16(graphs / "model.fp32.onnx", tmp_path / "m16.onnx", keep_fp32_nodes=["layer3.2.conv2"])
    m = onnx.load(str(a.path))
    node = next(n for n in m.graph.node if n.name == "layer3.2.conv2")
    w = next(i for i in m.graph.initializer if i.name == node.input[1])
    assert w.data_type == onnx.TensorProto.FLOAT
    with pytest.raises(BadInput, match="unknown layer"):
        to_fp16(graphs / "model.fp32.onnx", tmp_path / "x.onnx", keep_fp32_nodes=["layer9.conv"])


def test_fp16_keeps_out_of_range_weights_in_fp32(graphs: Path, tmp_path: Path) -> None:
    m = onnx.load(str(graphs / "model.fp32.onnx"))
    init = next(i for i in m.graph.initializer if i.name == "fc.weight")
    w = numpy_helper.to_array(init).copy()
    w[0, 0] = 1e6  # beyond fp16's 65504
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(m, str(tmp_path / "big.onnx"))
    a = to_fp16(tmp_path / "big.onnx", tmp_path / "big16.onnx")
    assert a.details["overflow_nodes"] == ["fc"]
    x = next(_calib(graphs, 8))
    out = ort.InferenceSession(str(a.path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.isfinite(out).all()


def _ranges(graphs: Path, recipe: str = "tensorrt", n: int = 128, method: str = "mean-max") -> Ranges:
    ops = ("Conv", "Gemm", "Add") if recipe == "tensorrt" else ("Conv", "Gemm", "Add", "Relu", "Clip", "MaxPool",
                                                                 "GlobalAveragePool", "AveragePool", "Flatten")
    return calibrate(graphs / "model.fp32.onnx", _calib(graphs, n), method, op_types=ops,
                     symmetric=recipe == "tensorrt")


def _producers(m: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in m.graph.node for o in n.output}


@pytest.mark.parametrize("recipe", ["tensorrt", "cpu"])
def test_int8_recipes(graphs: Path, tmp_path: Path, recipe: str) -> None:
    r = _ranges(graphs, recipe)
    a = quantize_int8(graphs / "model.fp32.onnx", tmp_path / "q.onnx", r, recipe=recipe)
    m = onnx.load(str(a.path))
    qs = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    dqs = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    assert qs and dqs and a.details["calibration_images"] == 128 and len(a.details["int8_layers"]) == 20
    inits = {i.name: i for i in m.graph.initializer}
    zp_types = {inits[q.input[2]].data_type for q in qs if len(q.input) > 2 and q.input[2] in inits}
    producers = _producers(m)
    if recipe == "tensorrt":
        assert zp_types == {onnx.TensorProto.INT8}  # symmetric int8 activations
        assert not any(inits[d.input[0]].data_type == onnx.TensorProto.INT32 for d in dqs if d.input[0] in inits)
        adds = [n for n in m.graph.node if n.op_type == "Add"]
        assert all(producers[i].op_type == "DequantizeLinear" for n in adds for i in n.input)  # residual adds
        # a conv's output goes straight into its ReLU: a pair there would only add rounding
        relus = [n for n in m.graph.node if n.op_type == "Relu"]
        assert not any(producers[n.input[0]].op_type == "DequantizeLinear" for n in relus
                       if producers[n.input[0]].op_type != "Add")
    else:
        assert onnx.TensorProto.UINT8 in zp_types
        assert any(inits[d.input[0]].data_type == onnx.TensorProto.INT32 for d in dqs if d.input[0] in inits)
    # the same ranges give the same graph: a calibration is computed once and reused
    b = quantize_int8(graphs / "model.fp32.onnx", tmp_path / "q2.onnx", r, recipe=recipe)
    assert b.sha256 == a.sha256


@pytest.mark.parametrize("recipe", ["tensorrt", "cpu"])
def test_a_kept_layer_computes_what_fp32_does_from_the_same_float_input(graphs: Path, tmp_path: Path,
                                                                       recipe: str) -> None:
    """The group rule: layer1.0.conv2 reads ReLU(conv1 output). Kept in float, no Q/DQ pair is left on that path
    (the cpu recipe puts one before the ReLU too), so fed conv1's int8-graph output it gives exactly what the fp32
    layer gives."""
    import torch
    import torch.nn.functional as F

    src = graphs / "model.fp32.onnx"
    a = quantize_int8(src, tmp_path / "q.onnx", _ranges(graphs, recipe), recipe=recipe,
                      exclude_nodes=["layer1.0.conv2"])
    m = onnx.load(str(a.path))
    node = next(n for n in m.graph.node if n.name == "layer1.0.conv2")
    relu = _producers(m)[node.input[0]]  # the cpu recipe's ReLU folded into a uint8 pair comes back as a node
    assert relu.op_type == "Relu" and _producers(m)[relu.input[0]].name == "layer1.0.conv1"  # no pair in between
    assert "layer1.0.conv2" not in quantized_layers(m)
    conv1_out, kept_out = relu.input[0], node.output[0]
    m.graph.output.extend([onnx.helper.make_empty_tensor_value_info(t) for t in (conv1_out, kept_out)])
    x = next(_calib(graphs, 16))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    c1, got = sess.run([conv1_out, kept_out], {"input": x})
    fp32 = onnx.load(str(src))
    inits = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
    f = next(n for n in fp32.graph.node if n.name == "layer1.0.conv2")
    want = F.conv2d(torch.relu(torch.from_numpy(c1.copy())), torch.from_numpy(inits[f.input[1]].copy()),
                    torch.from_numpy(inits[f.input[2]].copy()), padding=1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bias_correction_moves_each_layer_mean_back_to_fp32(graphs: Path, tmp_path: Path) -> None:
    src = graphs / "model.fp32.onnx"
    r = _ranges(graphs)
    plain = quantize_int8(src, tmp_path / "plain.onnx", r)
    images = np.concatenate(list(_calib(graphs, 64)))
    shifts = bias_shifts(src, onnx.load(str(plain.path)), images)
    assert set(shifts) == set(plain.details["int8_layers"]) and all(np.isfinite(v).all() for v in shifts.values())
    corrected = quantize_int8(src, tmp_path / "bc.onnx", r, correction_images=images)
    assert corrected.details["bias_corrected"] == 20 and corrected.sha256 != plain.sha256
    again = quantize_int8(src, tmp_path / "bc2.onnx", r, shifts=shifts)  # shifts computed once, reused
    assert again.sha256 == corrected.sha256
    # measured again on the corrected graph, each layer's mean shift is gone (it was not before)
    after = bias_shifts(src, onnx.load(str(corrected.path)), images)
    before = max(float(np.abs(v).max()) for v in shifts.values())
    assert before > 1e-3 and max(float(np.abs(v).max()) for v in after.values()) < 1e-5 + 1e-3 * before


def test_bias_correction_is_the_mean_over_every_image_and_position_of_the_weights_rounding(graphs: Path,
                                                                                            tmp_path: Path) -> None:
    """The shifts come from each layer's input summed over the images (a layer is linear): they equal the mean of
    (W - Wq) x taken image by image and position by position, zero padding included, as a conv computes it."""
    import torch
    import torch.nn.functional as F

    src = graphs / "model.fp32.onnx"
    plain = onnx.load(str(quantize_int8(src, tmp_path / "plain.onnx", _ranges(graphs)).path))
    images = np.concatenate(list(_calib(graphs, 48)))
    shifts = bias_shifts(src, plain, images)
    fp32 = onnx.load(str(src))
    inits = {i.name: numpy_helper.to_array(i) for i in [*fp32.graph.initializer, *plain.graph.initializer]}
    dq = {n.output[0]: n for n in plain.graph.node if n.op_type == "DequantizeLinear"}
    convs = {n.name: n for n in fp32.graph.node if n.op_type == "Conv" and n.name in shifts}
    assert len(convs) >= 10 and any(dict((a.name, a.ints) for a in n.attribute)["strides"] == [2, 2]
                                    for n in convs.values())
    m = onnx.ModelProto()
    m.CopyFrom(fp32)
    m.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n.input[0]) for n in convs.values())
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        [n.input[0] for n in convs.values()], {"input": images})
    for (name, node), x in zip(convs.items(), got, strict=True):
        qnode = next(n for n in plain.graph.node if n.name == name)
        wq_node = dq[qnode.input[1]]
        wi, ws, wz = (inits[t].astype(np.float64) for t in wq_node.input[:3])
        wq = (wi - wz.reshape(-1, 1, 1, 1)) * ws.reshape(-1, 1, 1, 1)
        attrs = {a.name: list(a.ints) for a in node.attribute}
        dw = torch.from_numpy(inits[node.input[1]].astype(np.float64) - wq)
        per = F.conv2d(torch.from_numpy(x.astype(np.float64)), dw, stride=attrs["strides"],
                       padding=attrs["pads"][:2])  # every image, every position
        np.testing.assert_allclose(shifts[name], per.mean([0, 2, 3]).numpy(), rtol=1e-4, atol=1e-7, err_msg=name)


def test_bias_correction_leaves_a_bias_it_would_move_by_twice_itself(graphs: Path, tmp_path: Path) -> None:
    """The weights' rounding shifts a layer's outputs a little; a layer whose bias is tinier still keeps it
    (NNCF's rule): the correction would swamp what the layer was trained to add."""
    from onnx import numpy_helper

    m = onnx.load(str(graphs / "model.fp32.onnx"))
    inits = {i.name: i for i in m.graph.initializer}
    conv = next(n for n in m.graph.node if n.name == "layer2.0.conv1")
    bias = numpy_helper.to_array(inits[conv.input[2]])
    inits[conv.input[2]].CopyFrom(numpy_helper.from_array(np.full_like(bias, 1e-7), conv.input[2]))
    src = tmp_path / "tiny_bias.onnx"
    onnx.save(m, str(src))
    plain = quantize_int8(src, tmp_path / "plain.onnx", _ranges(graphs))
    shifts = bias_shifts(src, onnx.load(str(plain.path)), np.concatenate(list(_calib(graphs, 64))))
    assert "layer2.0.conv1" in plain.details["int8_layers"] and "layer2.0.conv1" not in shifts
    assert len(shifts) == len(plain.details["int8_layers"]) - 1


def _fed_by_dq(m: onnx.ModelProto, node_name: str) -> bool:
    """Whether the layer's weight is quantized (its weight input comes through DequantizeLinear)."""
    producers = {o: n.op_type for n in m.graph.node for o in n.output}
    node = next(n for n in m.graph.node if n.name == node_name)
    return producers.get(node.input[1]) == "DequantizeLinear"


@pytest.mark.parametrize("recipe", ["tensorrt", "cpu"])
def test_int8_exclusions_and_float_ends(graphs: Path, tmp_path: Path, recipe: str) -> None:
    src = graphs / "model.fp32.onnx"
    r = _ranges(graphs, recipe, 64)
    a = quantize_int8(src, tmp_path / "q.onnx", r, exclude_nodes=["layer2.0.conv1"], recipe=recipe)
    m = onnx.load(str(a.path))
    assert a.details["float_ends"] == ["conv1", "fc"]
    assert not _fed_by_dq(m, "conv1") and not _fed_by_dq(m, "fc") and not _fed_by_dq(m, "layer2.0.conv1")
    assert _fed_by_dq(m, "layer2.0.conv2")
    # a kept layer reads the float tensor, not the int8-rounded copy made for its input's other consumers
    # (layer2.0.conv1 shares its input with the quantized downsample conv), and no Q/DQ pair is left unread
    producers = {o: n.op_type for n in m.graph.node for o in n.output}
    for name in ("layer2.0.conv1", "fc"):
        node = next(n for n in m.graph.node if n.name == name)
        assert producers.get(node.input[0]) != "DequantizeLinear", (name, node.input[0])
    downsample = next(n for n in m.graph.node if n.name == "layer2.0.downsample.0")
    assert producers[downsample.input[0]] == "DequantizeLinear"  # the other reader keeps its int8 input
    read = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
    assert all(o in read for n in m.graph.node if n.op_type.endswith("QuantizeLinear") for o in n.output)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    assert np.isfinite(ort.InferenceSession(str(a.path)).run(None, {"input": x})[0]).all()
    b = quantize_int8(src, tmp_path / "q2.onnx", r, quantize_ends=True, recipe=recipe)
    assert _fed_by_dq(onnx.load(str(b.path)), "conv1") and b.details["float_ends"] == []
    with pytest.raises(BadInput, match="unknown layer"):
        quantize_int8(src, tmp_path / "x.onnx", r, exclude_nodes=["nope"])


def test_fp16_fallback_runs_kept_layers_in_fp16(graphs: Path, tmp_path: Path) -> None:
    src = graphs / "model.fp32.onnx"
    a = quantize_int8(src, tmp_path / "q.onnx", _ranges(graphs), exclude_nodes=["layer2.1.conv2"], fallback="fp16")
    m = onnx.load(str(a.path))
    node = next(n for n in m.graph.node if n.name == "layer2.1.conv2")
    inits = {i.name: i for i in m.graph.initializer}
    assert inits[node.input[1]].data_type == onnx.TensorProto.FLOAT16 and a.details["fp16_layers"] == ["layer2.1.conv2"]
    assert _producers(m)[node.input[0]].op_type == "Cast"
    x = next(_calib(graphs, 8))
    got = ort.InferenceSession(str(a.path)).run(None, {"input": x})[0]
    ref = ort.InferenceSession(str(src)).run(None, {"input": x})[0]
    assert np.isfinite(got).all() and (got.argmax(1) == ref.argmax(1)).mean() >= 0.75


@pytest.mark.parametrize("method", list(CalibMethod))
def test_every_calibration_method_gives_a_range_per_quantized_tensor(graphs: Path, method: CalibMethod,
                                                                       tmp_path: Path) -> None:
    """50 images in batches of 64: the last batch is short (onnxruntime's histogram calibrators need one shape;
    they are fed image by image)."""
    r = calibrate(graphs / "model.fp32.onnx", _calib(graphs, 50), method)
    assert r.images == 50 and r.method is method
    a = quantize_int8(graphs / "model.fp32.onnx", tmp_path / "q.onnx", r)
    assert len(a.details["int8_layers"]) == 20
    r.save(tmp_path / "r.json")
    assert Ranges.load(tmp_path / "r.json").ranges == {k: tuple(v) for k, v in r.ranges.items()}
    if method is CalibMethod.mean_max:  # the mean of per-image maxima is below the overall maximum
        mx = calibrate(graphs / "model.fp32.onnx", _calib(graphs, 50), CalibMethod.max)
        t = next(iter(r.ranges))
        assert r.amax(t) <= mx.amax(t)


def test_calibration_needs_images_and_says_how_far_it_is(graphs: Path) -> None:
    with pytest.raises(BadInput, match="saw no images"):
        calibrate(graphs / "model.fp32.onnx", iter([]))
    seen: list[int] = []
    calibrate(graphs / "model.fp32.onnx", _calib(graphs, 128), "mean-max", on_images=seen.append)
    assert seen == [64, 128]  # in-graph reductions: once per batch
    seen.clear()
    calibrate(graphs / "model.fp32.onnx", lambda: _calib(graphs, 128), "percentile", on_images=seen.append)
    assert seen == [64, 128, 192, 256]  # histograms read every image twice (ranges, then counts): per batch
    assert Ranges.load(graphs / "missing.json") is None


def test_every_method_from_the_same_two_passes_gives_each_methods_own_ranges(graphs: Path) -> None:
    """The accuracy search calibrates its methods together: the images are read twice in all (extremes, then
    counts), and each method's ranges are those it gets calibrated alone."""
    seen: list[int] = []
    together = calibrate_methods(graphs / "model.fp32.onnx", lambda: _calib(graphs, 128), list(CalibMethod),
                                 on_images=seen.append)
    assert seen == [64, 128, 192, 256]
    for m in CalibMethod:
        alone = calibrate(graphs / "model.fp32.onnx", lambda: _calib(graphs, 128), m)
        assert together[m].ranges == alone.ranges and together[m].images == 128, m
    assert together[CalibMethod.percentile].ranges != together[CalibMethod.max].ranges


def test_the_tensorrt_layouts_calibration_covers_only_what_it_quantizes_with_the_same_ranges(
        graphs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibrating only the tensors the tensorrt layout puts Q/DQ pairs on gives each of them the range a full
    calibration gives it, and the graph needs no other; the second pass's chunks kept from the first (all, some
    or none of them, with one intra-op thread or one per core) count the same histograms."""
    import exporters.calibrate as cal
    from exporters.quantize import tensorrt_activations

    src = graphs / "model.fp32.onnx"
    full = calibrate(src, lambda: _calib(graphs, 128), "percentile")
    wanted = tensorrt_activations(onnx.load(str(src)))
    assert 10 < len(wanted) < len(full.ranges)
    real = cal._Activations._fits
    for kept, threads, want in (("all", 0, [True, True]), ("first", 1, [True, False]), ("none", 1, [False, False])):
        seen: list[int] = []
        fits: list[bool] = []

        def fit(self: cal._Activations, values: dict, kept: str = kept, fits: list = fits) -> bool:
            fits.append((kept != "first" or not self.kept) and real(self, values))
            return fits[-1]

        with monkeypatch.context() as mp:
            mp.setattr(cal._Activations, "_fits", fit)
            if kept == "none":
                mp.setattr(cal, "KEEP_BYTES", 0)
            some = calibrate(src, lambda: _calib(graphs, 128), "percentile", tensors=tensorrt_activations,
                             threads=threads, on_images=seen.append)
        assert fits == want and seen == [64, 128, 192, 256], kept
        assert some.ranges == {t: full.ranges[t] for t in wanted}, kept
    a = quantize_int8(src, tmp_path / "q.onnx", some)
    assert len(a.details["int8_layers"]) == 20


def test_calibrations_sums_give_bias_correction_its_own_passs_shifts(graphs: Path) -> None:
    """Bias correction's inputs summed by calibration's first pass give the shifts bias correction measures in a
    pass of its own over the same images, read whole or a batch at a time."""
    from exporters.calibrate import InputSums
    from exporters.quantize import tensorrt_activations

    src = graphs / "model.fp32.onnx"
    sums = InputSums()
    ranges = calibrate(src, lambda: _calib(graphs, 128), "mean-max", tensors=tensorrt_activations, sums=sums)
    assert sums.images == 128 and set(sums.sums) == set(ranges.ranges)
    plain, _, _ = int8_graph(src, ranges, recipe="tensorrt")
    own = bias_shifts(src, plain, np.concatenate(list(_calib(graphs, 128))))
    batched = bias_shifts(src, plain, _calib(graphs, 128))
    taken = bias_shifts(src, plain, None, sums=sums)
    assert set(own) == set(taken) == set(batched) and len(own) == 20
    for k in own:
        np.testing.assert_allclose(taken[k], own[k], rtol=1e-4, atol=1e-7, err_msg=k)
        np.testing.assert_allclose(batched[k], own[k], rtol=1e-4, atol=1e-7, err_msg=k)
    other = bias_shifts(src, plain, np.concatenate(list(_calib(graphs, 128)))[32:])
    assert max(float(np.abs(other[k] - own[k]).max()) for k in own) > 1e-5  # other images: other shifts


@pytest.mark.parametrize("recipe", ["tensorrt", "cpu"])
def test_reverting_layers_of_the_placed_graph_makes_the_graph_placed_without_them(graphs: Path, tmp_path: Path,
                                                                                   recipe: str) -> None:
    """The search's quick trials: layers put back in float in the placed plain graph compute what the graph placed
    with those layers excluded computes (bit for bit in the tensorrt layout, their fp16 fallback too: the search
    reuses an estimate's logits in the trial that measures it; onnxruntime's cpu layout quantizes an excluded
    add's output differently, so there only the answers must agree)."""
    src = graphs / "model.fp32.onnx"
    ranges = _ranges(graphs, recipe, method="percentile")
    reverted = ("layer1.0.conv1", "layer2.0/add", "layer3.2.conv2", "conv1")
    plain, _, _ = int8_graph(src, ranges, recipe=recipe, quantize_ends=True)
    shifts = bias_shifts(src, plain, next(_calib(graphs, 32)))
    want, _, _ = int8_graph(src, ranges, recipe=recipe, exclude_nodes=reverted, quantize_ends=True)
    apply_shifts(want, shifts)
    got = onnx.ModelProto()
    got.CopyFrom(plain)
    revert_layers(got, onnx.load(str(src)), reverted)
    apply_shifts(got, shifts)
    assert not set(reverted) & set(quantized_layers(got)) and len(quantized_layers(got)) == 19
    x = np.concatenate(list(_calib(graphs, 128)))
    a = ort.InferenceSession(want.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    b = ort.InferenceSession(got.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    if recipe == "cpu":
        assert (a.argmax(1) == b.argmax(1)).mean() >= 0.99 and np.abs(a - b).max() < 0.5
        return
    np.testing.assert_array_equal(a, b)
    half = quantize_int8(src, tmp_path / "half.onnx", ranges, recipe=recipe, exclude_nodes=reverted,
                         quantize_ends=True, shifts=shifts, fallback="fp16").path
    assert layers_to_fp16(got, reverted) == ["conv1", "layer1.0.conv1", "layer3.2.conv2"]
    c = ort.InferenceSession(str(half), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    d = ort.InferenceSession(got.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_array_equal(c, d)
    assert np.abs(c - a).max() > 0  # fp16 layers: other logits than the fp32 fallback's
    every = onnx.ModelProto()  # every layer and add reverted at once: no Q/DQ left, the fp32 graph's logits
    every.CopyFrom(plain)
    revert_layers(every, onnx.load(str(src)), revertible(plain))
    assert not [n for n in every.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    c = ort.InferenceSession(every.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(c, ref, atol=1e-4)


CPU_OPS = ("Conv", "Gemm", "Add", "Relu", "Clip", "MaxPool", "GlobalAveragePool", "AveragePool", "Flatten")


@pytest.mark.parametrize("method,symmetric,ops", [("percentile", True, ("Conv", "Gemm", "Add")),
                                                  ("percentile", False, CPU_OPS), ("entropy", True, ("Conv", "Gemm"))])
def test_streamed_histograms_give_onnxruntimes_ranges(graphs: Path, tmp_path: Path, method: str, symmetric: bool,
                                                      ops: tuple[str, ...]) -> None:
    """The anchor: onnxruntime's own calibrator, fed every image and holding all their activations, gives the very
    same ranges (bit for bit) as the streamed histograms, which hold a bounded chunk at a time."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    src = graphs / "model.fp32.onnx"
    xs = list(_calib(graphs, 96))
    ours = calibrate(src, lambda: xs, method, op_types=ops, symmetric=symmetric)

    class Reader:
        def __init__(self) -> None:
            self.it = iter([x[i : i + 1] for x in xs for i in range(len(x))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            return None if x is None else {"input": x}

    kind = CalibrationMethod.Percentile if method == "percentile" else CalibrationMethod.Entropy
    cal = create_calibrator(src, list(ops), augmented_model_path=str(tmp_path / "aug.onnx"), calibrate_method=kind,
                            providers=["CPUExecutionProvider"],
                            extra_options={"symmetric": symmetric, "percentile": 99.99})
    cal.collect_data(Reader())
    theirs = {k: (float(np.min(v.range_value[0])), float(np.max(v.range_value[1])))
              for k, v in cal.compute_data().data.items()}
    assert ours.ranges == theirs and ours.images == 96


@pytest.mark.slow
def test_calibration_memory_does_not_grow_with_the_images(tmp_path: Path) -> None:
    """Peak memory of percentile calibration with 32 and with 320 images of a ResNet-20 at 64x64 (18 MB of
    activations an image: onnxruntime's collector alone held 5.7 GB for 320); each run in its own process."""
    import subprocess
    import sys

    script = tmp_path / "calib.py"
    script.write_text(f"""
import resource, sys
from pathlib import Path
import numpy as np
from exporters.calibrate import calibrate
from exporters.onnx import export_onnx
from pipeline.model.zoo import build_model
path = {str(tmp_path / "m.onnx")!r}
if sys.argv[1] == "export":
    export_onnx(build_model("resnet20", num_classes=10, in_chans=3).eval(), (3, 64, 64), Path(path), exporter="legacy")
else:
    n = int(sys.argv[1])
    batches = lambda: (np.random.default_rng(i).standard_normal((32, 3, 64, 64)).astype(np.float32)
                       for i in range(n // 32))
    r = calibrate(path, batches, "percentile")
    assert r.images == n
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")
    root = Path(__file__).parents[1]

    def run(arg: str) -> str:
        done = subprocess.run([sys.executable, str(script), arg], capture_output=True, text=True, cwd=root)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    run("export")
    peak = {n: int(run(str(n)).split()[-1]) / 1024 for n in (32, 320)}
    assert peak[320] < 1.2 * peak[32], peak
