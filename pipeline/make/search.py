"""The int8 accuracy search (`export --max-accuracy-drop`): the int8 graph within a top-1 budget of the fp32
graph that keeps the most layers in int8.

A graph passes when its drop plus a margin is within the budget: one standard error of the paired drop on the
judging images (or --accuracy-margin points), so that the budget also holds on images the search did not judge.

Plain int8 is measured first, on every judging image. Over budget, candidates are first estimated on the proxy
rows: the judging images whose answer a graph between the last measured one and fp32 is most likely to change
(where the two differ in right or wrong, then where the label's lead is smallest), the other images keeping that
graph's answers. The other methods of SEARCH_METHODS (calibrated in the same passes over the images) are
estimated; then the quantized layers (and residual adds) are ranked once, by how much reverting each alone
recovers; the first-ranked are reverted as a group growing 1, 2, 4, ..., bisected back to the fewest that pass,
and pruned of any the others do without. Only that candidate is measured on every judging image, with its
reverted layers in fp16 where the tensorrt recipe's --fallback allows and the estimate passes so (one trial
instead of one in fp32, then one in fp16); if the estimate was too kind, the proxy rows are drawn again from it,
its layers stay reverted and the search goes on.
Estimated graphs are made in memory from the placed plain graph (Makers.quick); measured ones are the graphs
export writes (Makers.exact). The same ranking gives verify's `try:` suggestion.
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporters.calibrate import CalibMethod
from exporters.onnx import cpu_session, run_cpu
from exporters.quantize import Fallback
from pipeline.folder.manifest import SearchRecord, Trial
from pipeline.make.options import ExportOptions
from pipeline.make.ranking import LOGIT_CHUNK, Logits, rank_layers, ranking_images
from pipeline.model.data import (
    ImageSet,
    calibration_split,
    drawn_across,
    open_dataset,
    select_indices,
    spread_over_classes,
    spread_words,
)
from pipeline.model.zoo import ModelInfo
from resnetx.errors import BadInput

__all__ = ["AccuracySet", "accuracy_set", "Judge", "Logits", "Makers", "Fp32Logits", "rank_layers", "ranking_images",
           "search_int8", "SEARCH_METHODS"]

log = logging.getLogger(__name__)
PROXY_ROWS = (256, 768)  # estimates read at least/at most this many judging images: those most at risk of flipping
# ... and otherwise this many per image the last measured graph and fp32 differ on in right or wrong: with 2, the
# residual-hostile model's first candidate changed 19 answers outside the rows, its estimate passed and its trial
# did not; with 3 its first trial passed, and the search took less time (docs/precision.md)
PROXY_PER_CHANGE = 3
# the calibration methods the search tries beside the asked one: which of percentile and mean-max lost less on the
# small models of `scripts/int8_anchor.py` depends on the images scoring them, mean-max by far the least on a
# trained ResNet-50 at 224; max and entropy were never clearly better than the better of the two (docs/precision.md)
SEARCH_METHODS = (CalibMethod.percentile, CalibMethod.mean_max)


@dataclass(frozen=True)
class AccuracySet:
    """Held-out labelled images that judge int8: never the calibration images. Read a chunk at a time by every
    trial, so memory does not grow with --accuracy-samples."""

    images: ImageSet
    y: np.ndarray
    description: str  # which data judged, in words


def accuracy_set(o: ExportOptions, info: ModelInfo) -> AccuracySet:
    """--accuracy-data, or the held-out split of the calibration data: the test split where it has one, the
    images calibration did not use for `sample`; an image folder needs its own validation folder. An image folder
    (read in class order) larger than --accuracy-samples gets a seeded draw spread over its classes, as verify's."""
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
    if spread_over_classes(ds, o.accuracy_samples) and o.accuracy_samples < len(idx):
        idx = drawn_across(ds.labels, idx, o.accuracy_samples, o.seed)
        where += f", {spread_words(ds.labels[idx], len(ds.class_names or ()))}"
    idx = idx[: o.accuracy_samples]
    if len(idx) < 50:
        raise BadInput(f"--max-accuracy-drop: only {len(idx)} held-out image(s) of {ds.name}; give --accuracy-data "
                       "with more labelled images")
    images = ImageSet(ds, info.preprocess, idx)
    return AccuracySet(images, images.labels, f"{len(idx)} {ds.name} {where}")


class Fp32Logits:
    """The fp32 graph's logits on the judging images, begun in the background while calibration runs (its
    histogram counting takes one core: a one-thread session takes the other), and finished by the search: `result`
    takes the chunks still left on the caller's thread too, beside the background one. `stop`: an export that
    fails meanwhile waits for one chunk at most."""

    def __init__(self, fp32_path: Path, acc: AccuracySet) -> None:
        self._path, self._images = fp32_path, acc.images
        self._starts = list(range(0, len(acc.y), LOGIT_CHUNK))
        self._next, self._lock, self._stop = 0, threading.Lock(), threading.Event()
        self._out: dict[int, np.ndarray] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="rx-reference")
        self._future = self._pool.submit(self._work)

    def _take(self) -> int | None:
        with self._lock:
            if self._stop.is_set() or self._next == len(self._starts):
                return None
            self._next += 1
            return self._next - 1

    def _work(self) -> None:
        sess = None
        while (k := self._take()) is not None:
            sess = sess or cpu_session(self._path, threads=1)
            rows = np.arange(self._starts[k], min(self._starts[k] + LOGIT_CHUNK, len(self._images)))
            self._out[k] = run_cpu(sess, next(self._images.chunks(LOGIT_CHUNK, rows)), batch=64)

    def result(self) -> np.ndarray:
        try:
            self._work()
            self._future.result()
        finally:
            self._pool.shutdown()
        if len(self._out) < len(self._starts):
            raise RuntimeError("the fp32 reference logits were stopped before they were done")
        return np.concatenate([self._out[k] for k in range(len(self._starts))])

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown()


@dataclass(frozen=True)
class Makers:
    """How the search makes its int8 graphs, given (method, reverted layers, fallback)."""

    exact: Callable[[CalibMethod, tuple[str, ...], str, Path], list[str]]  # writes the graph export would write;
    # -> what may be kept out of int8
    quick: Callable[[CalibMethod, tuple[str, ...], str], Any]  # the same graph, in memory (onnx.ModelProto)


def _within(drop: float, margin: float, budget: float) -> bool:
    """The search's one rule: the drop plus its margin within the budget (points of top-1)."""
    return drop + margin <= budget + 1e-9


@dataclass(frozen=True)
class Judge:
    """Whether a graph's answers on the judging images are within budget: its drop plus a margin."""

    labels: np.ndarray
    fp32_correct: np.ndarray  # the fp32 graph right, per judging image
    budget: float
    fixed_margin: float | None = None  # None: one standard error of the paired drop

    def drop(self, correct: np.ndarray) -> float:
        return 100.0 * float(self.fp32_correct.mean() - correct.mean())

    def margin(self, correct: np.ndarray) -> float:
        if self.fixed_margin is not None:
            return self.fixed_margin
        d = self.fp32_correct.astype(np.float64) - correct
        return 100.0 * float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else 0.0

    def passes(self, correct: np.ndarray) -> bool:
        return _within(self.drop(correct), self.margin(correct), self.budget)

    @property
    def rule(self) -> str:
        if self.fixed_margin is not None:
            return f"{self.fixed_margin:g} point(s) (--accuracy-margin)"
        return f"one standard error of the drop on the {len(self.labels)} judging images"


@dataclass
class _Measured:
    trial: Trial
    logits: np.ndarray
    layers: list[str]  # what may be kept out of int8 in this graph


@dataclass
class _Search:
    """What every trial is made from and measured on, and the proxy rows estimates read."""

    makers: Makers
    logits: Logits
    judge: Judge
    reference: np.ndarray  # the fp32 graph's logits
    deadline: float
    tmp: Path
    on_progress: Callable[[str], None]
    trials: list[Trial] = field(default_factory=list)
    trial_logits: list[np.ndarray] = field(default_factory=list)  # each trial's, on every judging image
    estimates: int = 0
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # the proxy rows
    proxy: Logits | None = None
    answers: np.ndarray | None = None  # the last measured graph right, per judging image
    last: float = 0.0  # the last estimate's drop
    # the logits on the proxy rows of each graph estimated since they were drawn, by (method, reverted, fallback)
    estimated: dict[tuple, np.ndarray] = field(default_factory=dict)

    def measure(self, method: CalibMethod, reverted: tuple[str, ...], fallback: str) -> _Measured:
        """The exact graph on every judging image: a trial of the record."""
        start = time.perf_counter()
        path = self.tmp / f"trial{len(self.trials)}.onnx"
        layers = self.makers.exact(method, reverted, fallback, path)
        got = self._logits(path, (method, reverted, fallback))
        correct = got.argmax(1) == self.judge.labels
        drop, margin = self.judge.drop(correct), self.judge.margin(correct)
        t = Trial(method.value, reverted, fallback, round(100.0 * float(correct.mean()), 3), round(drop, 3),
                  round(time.perf_counter() - start, 2), round(margin, 3))
        self.trials.append(t)
        self.trial_logits.append(got)
        self.on_progress(f"int8 search: trial {len(self.trials)} on every judging image, {method.value}, "
                         f"{_reverted(reverted, fallback)}, top-1 drop {drop:.2f} + margin {margin:.2f} "
                         f"(budget {self.judge.budget:g})")
        return _Measured(t, got, layers)

    def _logits(self, path: Path, key: tuple) -> np.ndarray:
        """The graph's logits on every judging image: the proxy rows' from its estimate, where it was estimated on
        these rows and the layout computes the same logits in and out of memory, whatever the batch (the tensorrt
        layout's unfused Q/DQ pairs), the other rows read now."""
        known = self.estimated.get(key)
        if known is None or self.logits.fuse_qdq:
            return self.logits.of(path)
        rest = np.setdiff1d(np.arange(len(self.judge.labels)), self.rows)
        out = np.empty((len(self.judge.labels), known.shape[1]), known.dtype)
        out[self.rows] = known
        if len(rest):
            out[rest] = self.logits.of(path, rest)
        return out

    def passes(self, t: Trial) -> bool:
        return _within(t.drop, t.margin, self.judge.budget)

    def rebase(self, got: np.ndarray) -> None:
        """Estimates from now on: relative to this measured graph, read on the rows whose answer (right or wrong)
        another graph between it and fp32 is most likely to change: those where the two differ, then those where
        the label's lead (or gap) is smallest in either, less how far the logits moved."""
        lead_ref, lead_got = _lead(self.reference, self.judge.labels), _lead(got, self.judge.labels)
        risk = np.minimum(np.abs(lead_ref), np.abs(lead_got)) - np.abs(got - self.reference).max(1)
        risk[(lead_ref > 0) != (lead_got > 0)] = -np.inf
        n = min(len(risk), int(np.clip(PROXY_PER_CHANGE * np.isinf(risk).sum(), *PROXY_ROWS)))
        self.rows = np.sort(np.argsort(risk, kind="stable")[:n])
        self.proxy = self.logits.subset(self.rows)
        self.estimated.clear()  # read on other rows
        self.answers = got.argmax(1) == self.judge.labels

    def estimate(self, method: CalibMethod, reverted: tuple[str, ...], fallback: str = "fp32") -> bool:
        """Whether the graph would pass, from its answers on the proxy rows (its estimated drop: self.last)."""
        assert self.proxy is not None and self.answers is not None
        got = self.proxy.of(self.makers.quick(method, reverted, fallback))
        self.estimated[(method, reverted, fallback)] = got
        correct = self.answers.copy()
        correct[self.rows] = got.argmax(1) == self.judge.labels[self.rows]
        self.estimates += 1
        ok, self.last = self.judge.passes(correct), self.judge.drop(correct)
        self.on_progress(f"int8 search: estimate {self.estimates}, {method.value}, {_reverted(reverted, fallback)}: "
                         f"drop ~{self.last:.2f} ({'passes' if ok else 'over budget'})")
        return ok

    def out_of_time(self) -> bool:
        return time.perf_counter() > self.deadline


def _reverted(reverted: tuple[str, ...], fallback: str) -> str:
    """How many layers a graph reverts, and in what when not fp32 (the fallback's trial reverts the same ones)."""
    return f"{len(reverted)} layer(s) reverted" + (f" in {fallback}" if fallback != "fp32" else "")


def _lead(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """How far the label's logit leads the highest other one (negative: the answer is wrong)."""
    rows = np.arange(len(labels))
    others = logits.copy()
    others[rows, labels] = -np.inf
    return logits[rows, labels] - others.max(1)


def _best(trials: list[Trial], budget: float) -> int:
    """The trial kept: within budget with the fewest layers reverted (then the highest top-1), else the best."""
    within = [i for i, t in enumerate(trials) if _within(t.drop, t.margin, budget)]
    if within:
        return min(within, key=lambda i: (len(trials[i].reverted), -trials[i].top1, i))
    return min(range(len(trials)), key=lambda i: (trials[i].drop, len(trials[i].reverted), i))


def search_int8(o: ExportOptions, fp32_path: Path, acc: AccuracySet, makers: Makers,
                on_progress: Callable[[str], None], reference: np.ndarray | None = None) -> SearchRecord:
    """Run the search; the record's chosen trial names the method, the reverted layers and their fallback.
    reference: the fp32 graph's logits on the judging images, when already computed (`Reference`)."""
    start = time.perf_counter()
    logits = Logits(acc.images, fuse_qdq=o.int8_recipe.value != "tensorrt")  # see Logits
    reference = logits.of(fp32_path) if reference is None else reference
    judge = Judge(acc.y, reference.argmax(1) == acc.y, float(o.max_accuracy_drop or 0.0), o.accuracy_margin)
    with tempfile.TemporaryDirectory(prefix=".tmp-search-", dir=fp32_path.parent) as tmp:
        s = _Search(makers, logits, judge, reference, start + o.search_seconds, Path(tmp), on_progress)
        ranking = _methods_then_layers(s, o)
        chosen = _best(s.trials, judge.budget)
        if _may_fp16(o) and o.fallback is Fallback.auto and s.trials[chosen].reverted:
            chosen = _try_fp16(s, chosen)
    t = s.trials[chosen]
    return SearchRecord(judge.budget, acc.description, len(acc.y), round(100.0 * float(judge.fp32_correct.mean()), 3),
                        tuple(s.trials), chosen, s.passes(t), round(time.perf_counter() - start, 2), tuple(ranking),
                        judge.rule, s.estimates)


def _may_fp16(o: ExportOptions) -> bool:
    """Whether reverted layers may compute in fp16: the tensorrt recipe, --fallback auto or fp16."""
    return o.int8_recipe.value == "tensorrt" and o.fallback is not Fallback.fp32


def _methods_then_layers(s: _Search, o: ExportOptions) -> list[str]:
    """Plain int8 with the asked method; then the other methods, estimated; then layers reverted (see the module's
    doc). Returns the ranking."""
    m = s.measure(o.calib_method, (), "fp32")
    if s.passes(m.trial) or s.out_of_time():
        return []
    s.rebase(m.logits)
    picked = _method(s, o.calib_method, m)
    if picked is None or s.out_of_time():
        return []
    method, plain, layers = picked
    n, images = len(layers), min(ranking_images(len(layers), len(s.judge.labels)), len(s.rows))
    s.on_progress(f"int8 search: ranking {n} quantized layers by what reverting each recovers on {images} images")
    ranking = rank_layers(layers, lambda layer: s.makers.quick(method, (layer,), "fp32"), s.proxy,
                          s.reference[s.rows], plain, images,
                          lambda k: s.on_progress(f"int8 search: ranking, {k}/{n} layers"))
    reverted: tuple[str, ...] = ()
    half = _may_fp16(o)
    while not s.out_of_time():
        reverted = _fewest(s, method, ranking, reverted)
        # reverted in fp16 where asked, or where it may be and its estimate passes: one measured trial, not one in
        # fp32 and then one in fp16 (a miss in fp16 grows the group from there: more layers in fp16 beat fewer in
        # fp32 on a GPU)
        fp16 = half and (o.fallback is Fallback.fp16 or s.estimate(method, reverted, "fp16"))
        m = s.measure(method, reverted, "fp16" if fp16 else "fp32")
        if s.passes(m.trial) or len(reverted) == len(ranking):
            break
        s.rebase(m.logits)  # the estimate was too kind: draw the proxy rows again from this graph
    return ranking


def _method(s: _Search, asked: CalibMethod, m: _Measured) -> tuple[CalibMethod, np.ndarray, list[str]] | None:
    """The method whose plain graph loses least, with its logits on the proxy rows drawn from it and its revertible
    layers; None when one passes. Another method's plain graph is measured where its estimate passes or loses
    less."""
    method, best = asked, m
    for other in SEARCH_METHODS:
        if other is asked or s.out_of_time() or not (s.estimate(other, ()) or s.last < best.trial.drop):
            continue
        measured = s.measure(other, (), "fp32")
        if s.passes(measured.trial):
            return None
        if measured.trial.drop < best.trial.drop:
            method, best = other, measured
    if best is not m:
        s.rebase(best.logits)
    return method, best.logits[s.rows], best.layers


def _fewest(s: _Search, method: CalibMethod, ranking: list[str], kept: tuple[str, ...]) -> tuple[str, ...]:
    """By estimate: `kept` and the first-ranked others, reverted as a group growing 1, 2, 4, ... until it passes,
    bisected back to the fewest that pass, then pruned of each added layer the others do without (`kept` stays:
    a measured graph with them reverted did not pass)."""
    rest = [x for x in ranking if x not in kept]
    if not rest:
        return kept

    def ok(k: int) -> bool:
        return s.estimate(method, (*kept, *rest[:k]))

    lo, hi, k = 0, len(rest), 1
    while not s.out_of_time():
        if ok(k):
            hi = k
            break
        if k == len(rest):
            break
        lo, k = k, min(2 * k, len(rest))
    while hi - lo > 1 and not s.out_of_time():
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    chosen = [*kept, *rest[:hi]]
    for layer in reversed(rest[: hi - 1]):  # the last one added is what made the group pass
        if s.out_of_time():
            break
        fewer = tuple(x for x in chosen if x != layer)
        if s.estimate(method, fewer):
            chosen = list(fewer)
    return tuple(chosen)


def _try_fp16(s: _Search, chosen: int) -> int:
    """--fallback auto: the chosen graph, its reverted layers measured in fp32, tried with them in fp16 (faster on
    GPUs): estimated, then measured, and kept if within budget; not where the loop measured that graph already.
    (--fallback fp16 measures every graph that reverts layers in fp16 in the loop.)"""
    t = s.trials[chosen]
    done = any(x.method == t.method and x.reverted == t.reverted and x.fallback == "fp16" for x in s.trials)
    if done or s.out_of_time():
        return chosen
    s.rebase(s.trial_logits[chosen])
    if not s.estimate(CalibMethod(t.method), t.reverted, "fp16"):
        return chosen
    half = s.measure(CalibMethod(t.method), t.reverted, "fp16").trial
    return len(s.trials) - 1 if s.passes(half) else chosen
