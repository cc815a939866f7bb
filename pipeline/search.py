"""The int8 accuracy search (`export --max-accuracy-drop`): the int8 graph within a top-1 budget of the fp32
graph that keeps the most layers in int8.

Plain int8 first; over budget, the other calibration methods; then the quantized layers (and residual adds)
ranked by how much reverting each one alone recovers on the images int8 gets most wrong, reverted greedily (each
as a group, see exporters/quantize.py; a revert that does not lower the drop is undone) and re-measured until the
graph is within budget. Calibration ranges and bias shifts are
computed once per method and reused by every trial. The same ranking gives verify's `try:` suggestion.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exporters.calibrate import CalibMethod
from exporters.onnx import cpu_session, run_cpu
from exporters.quantize import Fallback
from pipeline.artifacts import SearchRecord, Trial
from pipeline.data import ImageSet, calibration_split, open_dataset, select_indices
from pipeline.export_options import ExportOptions
from pipeline.zoo import ModelInfo
from resnetx.errors import BadInput

__all__ = ["AccuracySet", "accuracy_set", "Logits", "rank_layers", "search_int8"]

log = logging.getLogger(__name__)
LOGIT_CHUNK = 256  # images decoded at a time for a trial's logits
RANKING_IMAGES = 256  # the images int8 gets most wrong, on which each layer's recovery is ranked
METHOD_ORDER = (CalibMethod.percentile, CalibMethod.mean_max, CalibMethod.entropy, CalibMethod.max)


@dataclass(frozen=True)
class AccuracySet:
    """Held-out labelled images that judge int8: never the calibration images. Read a chunk at a time by every
    trial, so memory does not grow with --accuracy-samples."""

    images: ImageSet
    y: np.ndarray
    description: str  # which data judged, in words


def accuracy_set(o: ExportOptions, info: ModelInfo) -> AccuracySet:
    """--accuracy-data, or the held-out split of the calibration data: the test split where it has one, the
    images calibration did not use for `sample`; an image folder needs its own validation folder."""
    name = o.accuracy_data or o.calib_data  # ExportOptions refused the data that cannot judge
    data_dir = o.accuracy_dir if o.accuracy_data else o.calib_dir
    ds = open_dataset(name, split="test", data_dir=data_dir, preprocess=info.preprocess)
    if ds.labels is None or len(ds.class_names or ()) != info.num_classes:
        raise BadInput(f"--max-accuracy-drop: {ds.name} has no labels for this model's {info.num_classes} classes; "
                       "give --accuracy-data with the model's classes")
    idx = np.arange(len(ds))
    where = "test split" if calibration_split(name) == "train" else "images"
    if name == o.calib_data and calibration_split(name) != "train":  # one set of images: leave calibration's out
        idx = np.setdiff1d(idx, select_indices(len(ds), o.calib_samples, o.seed, shuffle=True))
        where = "images not used for calibration"
    idx = idx[: o.accuracy_samples]
    if len(idx) < 50:
        raise BadInput(f"--max-accuracy-drop: only {len(idx)} held-out image(s) of {ds.name}; give --accuracy-data "
                       "with more labelled images")
    images = ImageSet(ds, info.preprocess, idx)
    return AccuracySet(images, images.labels, f"{len(idx)} {ds.name} {where}")


class Logits:
    """Logits of ONNX graphs (onnxruntime CPU) on a set of images, or on some rows of it, read a chunk at a time."""

    def __init__(self, images: ImageSet | np.ndarray) -> None:
        self.images = images

    def of(self, path: Path, rows: np.ndarray | None = None) -> np.ndarray:
        if isinstance(self.images, np.ndarray):
            return run_cpu(path, self.images if rows is None else self.images[rows], batch=64)
        sess = cpu_session(path)
        return np.concatenate([run_cpu(sess, x, batch=64) for x in self.images.chunks(LOGIT_CHUNK, rows)])


def rank_layers(layers: list[str], graph_without: Callable[[str], Path], logits: Logits, reference: np.ndarray,
                plain: np.ndarray) -> list[str]:
    """The quantized layers, the one whose reverting alone brings the logits closest to the reference first, on
    the images where plain int8 departs most from it. graph_without(layer) is the int8 graph with it reverted."""
    err = ((plain - reference) ** 2).mean(1)
    rows = np.sort(np.argsort(-err, kind="stable")[:RANKING_IMAGES])
    ref = reference[rows]
    base = float(((plain[rows] - ref) ** 2).mean())
    gains = []
    for i, layer in enumerate(layers):
        got = logits.of(graph_without(layer), rows)
        gains.append((base - float(((got - ref) ** 2).mean()), -i, layer))
    return [layer for _, _, layer in sorted(gains, reverse=True)]


@dataclass
class _Search:
    """What every trial is made from and measured on."""

    make: Callable[[CalibMethod, tuple[str, ...], str, Path], list[str]]  # -> what it may keep out of int8
    logits: Logits
    labels: np.ndarray
    reference: np.ndarray  # the fp32 graph's logits
    budget: float
    deadline: float
    tmp: Path
    on_progress: Callable[[str], None]
    trials: list[Trial] = field(default_factory=list)
    fp32_top1: float = 0.0

    def run(self, method: CalibMethod, reverted: tuple[str, ...], fallback: str) -> tuple[Trial, np.ndarray, list[str]]:
        start = time.perf_counter()
        path = self.tmp / f"trial{len(self.trials)}.onnx"
        int8_layers = self.make(method, reverted, fallback, path)
        got = self.logits.of(path)
        top1 = 100.0 * float((got.argmax(1) == self.labels).mean())
        t = Trial(method.value, reverted, fallback, round(top1, 3), round(self.fp32_top1 - top1, 3),
                  round(time.perf_counter() - start, 2))
        self.trials.append(t)
        self.on_progress(f"int8 search: trial {len(self.trials)}, {method.value}, {len(reverted)} layer(s) reverted, "
                         f"top-1 drop {t.drop:.2f} (budget {self.budget:g})")
        return t, got, int8_layers

    def within(self, t: Trial) -> bool:
        return t.drop <= self.budget

    def out_of_time(self) -> bool:
        return time.perf_counter() > self.deadline


def _best(trials: list[Trial], budget: float) -> int:
    """The trial kept: within budget with the fewest layers reverted (then the highest top-1), else the best."""
    within = [i for i, t in enumerate(trials) if t.drop <= budget]
    if within:
        return min(within, key=lambda i: (len(trials[i].reverted), -trials[i].top1, i))
    return min(range(len(trials)), key=lambda i: (trials[i].drop, len(trials[i].reverted), i))


def search_int8(o: ExportOptions, fp32_path: Path, acc: AccuracySet,
                make: Callable[[CalibMethod, tuple[str, ...], str, Path], list[str]],
                on_progress: Callable[[str], None]) -> SearchRecord:
    """Run the search; the record's chosen trial names the method, the reverted layers and their fallback."""
    start = time.perf_counter()
    logits = Logits(acc.images)
    reference = logits.of(fp32_path)
    with tempfile.TemporaryDirectory(prefix=".tmp-search-", dir=fp32_path.parent) as tmp:
        s = _Search(make, logits, acc.y, reference, float(o.max_accuracy_drop or 0.0), start + o.search_seconds,
                    Path(tmp), on_progress)
        s.fp32_top1 = 100.0 * float((reference.argmax(1) == acc.y).mean())
        ranking = _methods_then_layers(s, o)
        chosen = _best(s.trials, s.budget)
        if o.int8_target.value == "tensorrt" and o.fallback is not Fallback.fp32 and s.trials[chosen].reverted:
            chosen = _try_fp16(s, chosen, o.fallback)
    return SearchRecord(s.budget, acc.description, len(acc.y), round(s.fp32_top1, 3), tuple(s.trials), chosen,
                        s.trials[chosen].drop <= s.budget, round(time.perf_counter() - start, 2), tuple(ranking))


def _methods_then_layers(s: _Search, o: ExportOptions) -> list[str]:
    """Plain int8 with the asked method; then the other methods; then layers reverted greedily with the best."""
    first, got, layers = s.run(o.calib_method, (), "fp32")
    if s.within(first):
        return []
    plain = {o.calib_method: (first, got, layers)}
    for m in METHOD_ORDER:
        if m not in plain and not s.out_of_time():
            plain[m] = s.run(m, (), "fp32")
    method, (best, got, layers) = max(plain.items(), key=lambda kv: (kv[1][0].top1, -METHOD_ORDER.index(kv[0])))
    if s.within(best) or s.out_of_time():
        return []
    tmp = s.tmp / "rank.onnx"

    def without(layer: str) -> Path:
        s.make(method, (layer,), "fp32", tmp)
        return tmp

    s.on_progress(f"int8 search: ranking {len(layers)} quantized layers by what reverting each recovers")
    ranking = rank_layers(layers, without, s.logits, s.reference, got)
    reverted, drop = (), best.drop
    for layer in ranking:  # a revert that does not lower the drop is undone: the layer stays int8
        if s.out_of_time():
            break
        t = s.run(method, (*reverted, layer), "fp32")[0]
        if t.drop < drop:
            reverted, drop = t.reverted, t.drop
        if s.within(t):
            break
    return ranking


def _try_fp16(s: _Search, chosen: int, fallback: Fallback) -> int:
    """The chosen graph with its reverted layers in fp16 (faster on GPUs): kept if asked, or if within budget."""
    t = s.trials[chosen]
    if s.out_of_time() and fallback is Fallback.auto:
        return chosen
    half, _, _ = s.run(CalibMethod(t.method), t.reverted, "fp16")
    if fallback is Fallback.fp16 or half.drop <= s.budget:
        return len(s.trials) - 1
    return chosen
