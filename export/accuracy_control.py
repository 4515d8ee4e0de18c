"""Accuracy-controlled int8: the fastest int8 OpenVINO variant that passes the user's gate.

Plain post-training int8 is all or nothing: on a strict gate one sensitive layer (an outlier
channel feeding a pooling layer, the first convolution's raw pixels, a ViT's attention) can
sink a model whose other layers quantise harmlessly. When plain int8 is refused,
:func:`search_int8` rebuilds it with the most sensitive layers kept in fp32 (NNCF
``ignored_scope``), in a fixed order of growing cost:

1. the first convolution (raw pixels in; few FLOPs, often sensitive);
2. the head: every op after the last convolution of a CNN (RN50's attention pool, global
   pooling, projection) or after the last LayerNorm of a ViT (``ln_post``, projection);
3. ViTs: LayerNorm (MVN), GELU and softmax inputs and the activation x activation
   (attention) MatMuls;
4. the deepest quarter, then half, then three quarters of the convolutions / MatMuls still
   quantised.

Each candidate is measured with the gate's own metric (:func:`agreement_report`: SRCC and
p99 |dscore| vs the fp32 scores, per anchor set) on the same held-out images as the plain
variant, and timed against fp32 in this process. The first candidate that passes is pruned
(each earlier group is given back to int8 when the gate still passes without it), then
refined op by op (:func:`rank_ops`, :func:`_refine`): every op behind an activation quantiser
of the plain int8 model is given back to fp32 alone (its quantisers bypassed, its fp32
weights put back - one compile and one short pass on calibration images each, no NNCF build)
and ranked by how much of the continuous score error vs fp32 that removes; then the count of
most sensitive ops kept in fp32 is bisected (log2 builds, each validated by the gate), and
the smallest passing set replaces the group result when it leaves more convolutions /
MatMuls in int8. The result is kept only when it is faster than fp32; otherwise the plain
report is returned, refused, with every step tried.

Why not NNCF's ``quantize_with_accuracy_control``: it re-validates the model on the
validation set once per quantiser against a single scalar metric, then removes quantisers one
validation at a time, while the gate has two thresholds per anchor set. Here the per-op
ranking is measured on a few calibration images with a continuous score error (the gate's
SRCC on a few dozen held-out images is too discrete to rank by), and only the bisection steps
are gated: a bounded number of builds, and the report says which ops stayed in fp32.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from quasar.runtime.agreement import Gate, agreement_report

log = logging.getLogger(__name__)

QUANTIZABLE = frozenset({"Convolution", "GroupConvolution", "MatMul"})
VIT_TYPES = ("MVN", "Gelu", "Softmax", "SoftMax")
MIN_TIMING_S = 0.3
# The per-op refinement (minutes on RN50: one ranking pass per op) runs only when the group
# search's result is slower than this multiple of fp32, where most of int8's speed was lost.
REFINE_BELOW = 2.0
RANK_IMAGES = 16  # calibration images the per-op ranking runs on
PEEL_SHARE = 0.5  # an op removing more than this share of the score error is ranked first
MAX_PEEL = 3  # and the others ranked again without it, at most this many times
# ops a quantiser may sit in front of on its way to the convolution / MatMul it serves
PASS_THROUGH = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "StridedSlice",
                          "Gather", "Split", "VariadicSplit", "Concat", "Convert"})
LOW_BITS = ("i8", "u8", "i4", "u4")


@dataclass
class Group:
    """Ops kept in fp32 together: ``label`` for the report, op ``names``, op ``types``."""

    label: str
    names: List[str] = field(default_factory=list)
    types: List[str] = field(default_factory=list)


def _compute_ops(model) -> List[Any]:
    """The ops on the data path from the image (not constants, not shape arithmetic such as
    ShapeOf -> Subtract -> Broadcast), in topological order."""
    act, out = set(), []
    for op in model.get_ordered_ops():
        t = op.get_type_name()
        if t == "Parameter":
            act.add(op.get_friendly_name())
        elif t not in ("ShapeOf", "Result") and any(
                i.get_source_output().get_node().get_friendly_name() in act
                for i in op.inputs()):
            act.add(op.get_friendly_name())
            out.append(op)
    return out


def _const_input(op, act: set) -> bool:
    """Does one input of ``op`` come from off the data path (weights, constants)?"""
    return any(i.get_source_output().get_node().get_friendly_name() not in act
               for i in op.inputs())


def _after_bias(ops: Sequence[Any], i: int) -> int:
    """Index of the last op of layer ``ops[i]``: its bias Add, when the next op is one."""
    act = {op.get_friendly_name() for op in ops}
    nxt = ops[i + 1] if i + 1 < len(ops) else None
    if nxt is not None and nxt.get_type_name() == "Add" and _const_input(nxt, act) and any(
            inp.get_source_output().get_node().get_friendly_name() ==
            ops[i].get_friendly_name() for inp in nxt.inputs()):
        return i + 1
    return i


def sensitive_groups(model, transformer: bool) -> List[Group]:
    """The ladder of op groups to keep in fp32 (see the module docstring), empty groups and
    ops already in an earlier group dropped. ``model``: an ``openvino.Model``."""
    ops = _compute_ops(model)
    names = [op.get_friendly_name() for op in ops]
    types = [op.get_type_name() for op in ops]
    quant = [i for i, t in enumerate(types) if t in QUANTIZABLE]
    convs = [i for i, t in enumerate(types) if t in ("Convolution", "GroupConvolution")]
    marks = [i for i, t in enumerate(types) if t == "MVN"] if transformer else convs
    groups = [Group("first convolution", [names[convs[0]]] if convs else [])]
    head = names[_after_bias(ops, marks[-1]) + 1:] if marks else []
    groups.append(Group("head (attention pool / pooling / projection)", head))
    if transformer:
        act = set(names)
        attn = [names[i] for i in quant if types[i] == "MatMul" and not _const_input(ops[i], act)]
        present = [t for t in VIT_TYPES if t in types]
        groups.append(Group("LayerNorm / GELU / softmax / attention MatMuls", attn, present))
    taken = {n for g in groups for n in g.names}
    rest = [names[i] for i in quant if names[i] not in taken]
    if len(rest) >= 4:
        q = len(rest) // 4
        groups.append(Group("deepest quarter of the remaining layers", rest[-q:]))
        groups.append(Group("deepest half of the remaining layers", rest[-2 * q:-q]))
        groups.append(Group("deepest three quarters of the remaining layers",
                            rest[-3 * q:-2 * q]))
    out, seen = [], set()
    for g in groups:
        g.names = [n for n in dict.fromkeys(g.names) if n not in seen]
        seen.update(g.names)
        if g.names or g.types:
            out.append(g)
    return out


def quantized_ops(model, groups: Sequence[Group]) -> List[str]:
    """The convolutions / MatMuls of ``model`` that stay int8 when ``groups`` are kept."""
    names = {n for g in groups for n in g.names}
    return [op.get_friendly_name() for op in _compute_ops(model)
            if op.get_type_name() in QUANTIZABLE and op.get_friendly_name() not in names]


def interleaved_img_s(runs: Sequence[Callable[[np.ndarray], Any]],
                      batches: Sequence[np.ndarray], min_time: float = MIN_TIMING_S,
                      min_passes: int = 3) -> List[float]:
    """Images/s of each of ``runs`` on the same batches, their passes alternated (a, b, a,
    b, ...) for at least ``min_passes`` each and ``min_time`` seconds, each from its fastest
    pass per batch: load that comes and goes on a shared machine hits every run alike, and
    the minimum is what the hardware does when nothing else runs."""
    best = [[float("inf")] * len(batches) for _ in runs]
    for run in runs:
        run(batches[0])  # warm-up
    t_end = time.perf_counter() + float(min_time)
    passes = 0
    while passes < int(min_passes) or time.perf_counter() < t_end:
        for r, run in enumerate(runs):
            for i, b in enumerate(batches):
                t0 = time.perf_counter()
                run(b)
                best[r][i] = min(best[r][i], time.perf_counter() - t0)
        passes += 1
    n = sum(len(b) for b in batches)
    return [n / sum(times) for times in best]


def _summary(report: Dict[str, Any]) -> Dict[str, Any]:
    sets = report["anchor_sets"].values()
    srcc = [s["srcc"] for s in sets]
    p99 = [s["p99_abs_dscore"] for s in sets]
    return {"srcc_min": None if not srcc or None in srcc else min(srcc),
            "p99_abs_dscore_max": None if not p99 or None in p99 else max(p99),
            "cosine_min": report["cosine_min"], "passed": bool(report["passed"])}


@dataclass
class SearchContext:
    """What every candidate is built from and measured on (see :func:`search_int8`)."""

    bundle: Any
    cal_x: Sequence[np.ndarray]
    hold_x: Sequence[np.ndarray]
    ref: np.ndarray
    gate: Gate
    work: Path
    batch_size: int = 16
    threads: Optional[int] = None
    fp32_run: Optional[Callable[[np.ndarray], Any]] = None  # set by search_int8
    plain_files: Optional[Dict[str, Path]] = None  # the plain int8 IR (set by apply_search)


@dataclass
class Candidate:
    groups: List[Group]
    files: Dict[str, Path]
    tool_version: str
    report: Dict[str, Any]
    embeddings: np.ndarray
    img_s: float
    fp32_img_s: float  # timed in alternation with the candidate


def _build(ctx: SearchContext, groups: Sequence[Group], step: int) -> Candidate:
    """NNCF int8 with ``groups`` kept in fp32, measured with the gate's metric."""
    import nncf

    from quasar.export.precision import _batches, _embed, build_int8_openvino
    from quasar.runtime.backends import OpenArgs, open_encoder

    names = sorted({n for g in groups for n in g.names})
    types = sorted({t for g in groups for t in g.types})
    work = ctx.work / f"accuracy-control-{step}"
    work.mkdir(parents=True, exist_ok=True)
    scope = nncf.IgnoredScope(names=names, types=types, validate=False)
    files, _, version = build_int8_openvino(ctx.bundle, ctx.cal_x, work, ignored=scope)
    m = ctx.bundle.manifest.encoder
    sess = open_encoder(OpenArgs(model_path=Path(files["encoder.xml"]), input_name=m.input_name,
                                 output_name=m.output_name, precision="int8",
                                 threads=ctx.threads), "openvino")
    emb, _ = _embed(sess.run, ctx.hold_x, ctx.batch_size)
    fp32_speed, speed = interleaved_img_s([ctx.fp32_run, sess.run],
                                          _batches(ctx.hold_x, ctx.batch_size))
    del sess
    report = agreement_report(ctx.ref, emb, ctx.bundle.anchors, ctx.gate)
    return Candidate(list(groups), files, version, report, emb, speed, fp32_speed)


def _step_record(c: Candidate, action: str) -> Dict[str, Any]:
    return {"action": action, "kept_groups": [g.label for g in c.groups],
            **_summary(c.report), "img_s": round(c.img_s, 2),
            "fp32_img_s": round(c.fp32_img_s, 2), "vs_fp32": round(c.img_s / c.fp32_img_s, 3)}


def _prune(ctx: SearchContext, best: Candidate, steps: List[Dict[str, Any]]) -> Candidate:
    """Give each earlier group back to int8 while the gate still passes without it."""
    for g in list(best.groups[:-1]):
        trial = [x for x in best.groups if x is not g]
        c = _build(ctx, trial, len(steps))
        steps.append(_step_record(c, f"back to int8: {g.label}"))
        if c.report["passed"]:
            best = c
    return best


# --------------------------------------------------------------------------- per-op refinement

@dataclass
class Unit:
    """One op of the plain int8 model that reads an activation quantiser: ``name`` (kept in
    fp32 through NNCF ``ignored_scope``), ``edges`` (its inputs fed by a FakeQuantize, as
    OpenVINO ``Input`` handles) and ``gain`` (the score error removed by keeping it fp32)."""

    name: str
    edges: List[Any] = field(default_factory=list)
    gain: float = 0.0


def _data_path(model) -> set:
    """Friendly names of the ops fed, directly or not, by a model input (FakeQuantizes
    included): everything else is weights and constants."""
    act = set()
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Parameter" or any(
                i.get_source_output().get_node().get_friendly_name() in act
                for i in op.inputs()):
            act.add(op.get_friendly_name())
    return act


def quantized_units(qmodel, names: set) -> List[Unit]:
    """The ops of the int8 model ``qmodel`` behind an activation FakeQuantize (through
    reshapes / transposes / concats: the op the quantiser serves), in topological order;
    only ops whose name is in ``names`` (the fp32 model's, what ``ignored_scope`` takes)."""
    act = _data_path(qmodel)
    units: Dict[str, Unit] = {}
    for fq in qmodel.get_ordered_ops():
        if fq.get_type_name() != "FakeQuantize" or \
                fq.input(0).get_source_output().get_node().get_friendly_name() not in act:
            continue
        for out in fq.outputs():
            for edge in out.get_target_inputs():
                served, todo, seen = [], [edge.get_node()], set()
                while todo:
                    n = todo.pop(0)
                    if n.get_friendly_name() in seen:
                        continue
                    seen.add(n.get_friendly_name())
                    if n.get_type_name() in PASS_THROUGH:
                        todo += [t.get_node() for o in n.outputs() for t in o.get_target_inputs()]
                    elif n.get_type_name() not in ("Result", "FakeQuantize"):
                        served.append(n.get_friendly_name())
                for name in served:
                    if name in names:
                        units.setdefault(name, Unit(name)).edges.append(edge)
    return list(units.values())


def _low_bit_weight(output) -> bool:
    """Is ``output`` (a weight input's source) an int8 / int4 constant, dequantised?"""
    todo = [output.get_node()]
    while todo:
        n = todo.pop()
        if n.get_type_name() == "Constant":
            if n.get_element_type().get_type_name() in LOW_BITS:
                return True
        elif n.get_type_name() in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose"):
            todo += [i.get_source_output().get_node() for i in n.inputs()]
    return False


def _revert(unit: Unit, q_ops: Dict[str, Any], f32_ops: Dict[str, Any], act: set
            ) -> List[Tuple[Any, Any]]:
    """Give ``unit`` back to fp32 in the int8 model, in place: its activation FakeQuantizes
    bypassed, its int8 weights replaced by the fp32 model's. Returns what undoes it."""
    import openvino as ov

    undo = []
    for edge in unit.edges:
        src = edge.get_source_output()
        if src.get_node().get_type_name() != "FakeQuantize":  # already bypassed (shared edge)
            continue
        undo.append((edge, src))
        edge.replace_source_output(src.get_node().input(0).get_source_output())
    op, f32 = q_ops.get(unit.name), f32_ops.get(unit.name)
    if op is None or f32 is None or op.get_type_name() not in QUANTIZABLE:
        return undo
    for p, edge in enumerate(op.inputs()):
        src = edge.get_source_output()
        if src.get_node().get_friendly_name() in act or not _low_bit_weight(src) or \
                p >= len(f32.inputs()):
            continue
        w = f32.input(p).get_source_output().get_node()
        if w.get_type_name() != "Constant" or not edge.get_partial_shape().is_static or \
                list(w.get_output_shape(0)) != list(edge.get_shape()):
            continue
        undo.append((edge, src))
        edge.replace_source_output(ov.opset13.constant(np.array(w.get_data())).output(0))
    return undo


def _score_error(ref: np.ndarray, emb: np.ndarray, anchors) -> float:
    """Continuous disagreement with fp32: per anchor set the mean squared score difference
    over the fp32 scores' variance, averaged (1 - cosine when there are no anchors)."""
    from quasar.runtime.scoring import quasar_scores

    if not len(anchors):
        cos = (ref * emb).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(emb, axis=1))
        return float(np.mean(1.0 - cos))
    errs = []
    for a in anchors.values():
        s_ref, s_var = quasar_scores(ref, a), quasar_scores(emb, a)
        errs.append(float(np.mean((s_var - s_ref) ** 2) / max(float(np.var(s_ref)), 1e-12)))
    return float(np.mean(errs))


def rank_ops(ctx: SearchContext, fp32_model) -> Tuple[List[Unit], Dict[str, Any]]:
    """Every op of the plain int8 model behind an activation quantiser, most sensitive
    first: each is given back to fp32 alone (its quantisers bypassed, its fp32 weights put
    back: what ``ignored_scope`` on it builds, without re-calibrating) and the score error vs
    fp32 (:func:`_score_error`) on up to ``RANK_IMAGES`` calibration images - never the
    held-out ones the gate judges - is measured again: one compile and one short pass per op,
    no NNCF build. When one op removes most of the error (``PEEL_SHARE``), the others' gains
    were measured on a wrecked model: that op is ranked first, kept in fp32, and the others
    ranked again (at most ``MAX_PEEL`` times)."""
    import openvino as ov

    from quasar.export.precision import _batches, build_int8_openvino

    t0 = time.perf_counter()
    xml = (ctx.plain_files or {}).get("encoder.xml")
    if xml is None or not Path(xml).exists():
        work = ctx.work / "accuracy-control-rank"
        work.mkdir(parents=True, exist_ok=True)
        xml = build_int8_openvino(ctx.bundle, ctx.cal_x, work)[0]["encoder.xml"]
    core = ov.Core()
    q = core.read_model(str(xml))
    f32_ops = {op.get_friendly_name(): op for op in fp32_model.get_ordered_ops()}
    units = quantized_units(q, {op.get_friendly_name() for op in _compute_ops(fp32_model)})
    q_ops = {op.get_friendly_name(): op for op in q.get_ordered_ops()}
    act = _data_path(q)
    batches = _batches(list(ctx.cal_x[:RANK_IMAGES]), ctx.batch_size)
    ref = np.concatenate([np.asarray(ctx.fp32_run(b), dtype=np.float32) for b in batches])
    cfg: Dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if ctx.threads:
        cfg["INFERENCE_NUM_THREADS"] = int(ctx.threads)

    def error() -> float:
        cm = core.compile_model(q, "CPU", cfg)
        emb = np.concatenate([np.asarray(cm(b)[cm.output(0)], dtype=np.float32)
                              for b in batches])
        return _score_error(ref.astype(np.float64), emb.astype(np.float64), ctx.bundle.anchors)

    plain = base = error()
    peeled: List[Unit] = []
    rest = list(units)
    for _ in range(MAX_PEEL + 1):
        for u in rest:
            undo = _revert(u, q_ops, f32_ops, act)
            try:
                u.gain = base - error()
            finally:
                for edge, src in reversed(undo):
                    edge.replace_source_output(src)
        rest.sort(key=lambda u: -u.gain)
        # one op holding most of the error: the others' gains were measured on a wrecked
        # model (errors do not add there); keep it in fp32 and rank the others again
        if len(peeled) == MAX_PEEL or len(rest) < 2 or not rest[0].gain > PEEL_SHARE * base:
            break
        _revert(rest[0], q_ops, f32_ops, act)
        peeled.append(rest.pop(0))
        base = error()
    ranked = peeled + rest
    info = {"method": "each op given back to fp32 alone in the plain int8 model (quantisers "
                      "bypassed, fp32 weights), score error vs fp32 on calibration images",
            "ops": len(units), "images": int(sum(len(b) for b in batches)),
            "plain_error": plain, "ranked_again_after": [u.name for u in peeled],
            "seconds": round(time.perf_counter() - t0, 1),
            "most_sensitive": [[u.name, u.gain] for u in ranked[:10]]}
    return ranked, info


def _refine(ctx: SearchContext, model, best: Candidate, steps: List[Dict[str, Any]],
            record: Dict[str, Any]) -> Candidate:
    """After the group search passed with ``best``: rank the ops (:func:`rank_ops`) and
    bisect on how many of the most sensitive to keep in fp32, each count built and validated
    by the gate; the smallest passing set replaces ``best`` when it leaves more convolutions
    / MatMuls in int8. Counts that could not beat ``best`` are not tried."""
    try:
        ranked, info = rank_ops(ctx, model)
    except Exception as exc:  # a graph the op surgery does not handle: keep the group result
        log.warning("accuracy control: per-op ranking failed (%s); keeping the group result",
                    exc)
        record["refinement"] = {"error": f"{type(exc).__name__}: {exc}", "chosen": False}
        return best
    record["refinement"] = info
    log.info("accuracy control: ranked %d ops in %.1f s", info["ops"], info["seconds"])
    quant = {op.get_friendly_name() for op in _compute_ops(model)
             if op.get_type_name() in QUANTIZABLE}
    best_int8 = len(quantized_ops(model, best.groups))
    kept_quant = len(quant) - best_int8
    counts, n = [], 0  # counts[k-1]: quantisable ops among the k most sensitive
    for u in ranked:
        n += u.name in quant
        counts.append(n)
    kmax = 0
    while kmax < len(ranked) and counts[kmax] < kept_quant:
        kmax += 1
    info["bisection"] = f"k in [1, {kmax}] of {len(ranked)} ranked ops"

    def groups(k: int) -> List[Group]:
        return [Group(f"the {k} most sensitive ops (per-op ranking)",
                      [u.name for u in ranked[:k]])]

    # plain (k = 0) failed; k = kmax + 1 stands for best. The largest useful count first:
    # when it fails, fewer ops in fp32 are not expected to pass (one build, not log2 N)
    lo, hi, found = 0, kmax + 1, None
    while hi - lo > 1:
        mid = kmax if found is None and lo == 0 and hi == kmax + 1 and kmax > 1 \
            else (lo + hi) // 2
        c = _build(ctx, groups(mid), len(steps))
        steps.append(_step_record(c, f"keep fp32: the {mid} most sensitive ops"))
        log.info("accuracy control: %s", steps[-1])
        if c.report["passed"]:
            hi, found = mid, c
        elif mid == kmax:
            break
        else:
            lo = mid
    if found is not None and len(quantized_ops(model, found.groups)) > best_int8:
        info["chosen"] = True
        return found
    info["chosen"] = False
    return best


def search_int8(ctx: SearchContext, plain: Dict[str, Any]
                ) -> Tuple[Optional[Candidate], Dict[str, Any]]:
    """After plain int8 failed the gate (``plain``, its report): the fastest candidate that
    passes and is faster than fp32, or None. Returns (candidate, the ``accuracy_control``
    record for the report: every step tried, the layers kept in fp32, the speeds)."""
    import openvino as ov

    from quasar.export.precision import _batches, _is_transformer
    from quasar.runtime.backends import Choice
    from quasar.runtime.scorer import open_bundle_encoder

    fp32 = open_bundle_encoder(ctx.bundle, Choice(None, "fp32", "onnxruntime", "reference"),
                               device="cpu", threads=ctx.threads)
    ctx.fp32_run = fp32.run
    model = ov.Core().read_model(str(ctx.bundle.encoder_path))
    ladder = sensitive_groups(model, _is_transformer(ctx.bundle))
    steps: List[Dict[str, Any]] = [{"action": "plain int8", "kept_groups": [],
                                    **_summary(plain)}]
    record: Dict[str, Any] = {"method": "ordered fp32 ladder (NNCF ignored_scope), then per-op "
                                        "refinement (ranked on calibration images, bisected), "
                                        "validated by the gate on the held-out images",
                              "steps": steps}
    found: Optional[Candidate] = None
    for k in range(1, len(ladder) + 1):
        if not quantized_ops(model, ladder[:k]):
            record["stopped"] = "no convolution or MatMul left in int8"
            break
        c = _build(ctx, ladder[:k], len(steps))
        steps.append(_step_record(c, f"keep fp32: {ladder[k - 1].label}"))
        log.info("accuracy control: %s", steps[-1])
        if c.report["passed"]:
            found = _prune(ctx, c, steps)
            if found.img_s < REFINE_BELOW * found.fp32_img_s:  # much left to win
                found = _refine(ctx, model, found, steps, record)
            else:
                record["refinement"] = {"chosen": False, "skipped": (
                    f"the group result is already {found.img_s / found.fp32_img_s:.2f}x fp32 "
                    f"(refined only below {REFINE_BELOW}x)")}
            break
    ctx.fp32_run = None
    del fp32
    if found is not None and found.img_s <= found.fp32_img_s:
        record["stopped"] = (f"the passing candidate ({found.img_s:.1f} img/s) is not faster "
                             f"than fp32 ({found.fp32_img_s:.1f} img/s, timed in alternation)")
        found = None
    if found is None:
        record.setdefault("stopped", "no candidate passed the gate")
        return None, record
    record.update(kept_groups=[g.label for g in found.groups],
                  kept_higher_precision=sorted({n for g in found.groups for n in g.names}),
                  kept_types=sorted({t for g in found.groups for t in g.types}),
                  int8_ops=len(quantized_ops(model, found.groups)),
                  variant_img_s=round(found.img_s, 2), fp32_img_s=round(found.fp32_img_s, 2))
    return found, record


def apply_search(ctx: SearchContext, plain: Dict[str, Any], files: Dict[str, Path], tool: str,
                 img_s: float) -> Tuple[Dict[str, Path], str, float, Dict[str, Any]]:
    """The hook ``quasar optimize`` calls when plain int8 OpenVINO is refused.

    Takes and returns (files, tool, variant images/s, report): the passing candidate's, with
    ``accuracy_control`` in its agreement report; or, when nothing faster than fp32 passes,
    the plain variant's unchanged with ``accuracy_control`` added to its report and the
    reason appended to ``failures`` (the gate's verdict stays: refused)."""
    from quasar.export.precision import _version

    if ctx.plain_files is None:
        ctx.plain_files = files
    found, record = search_int8(ctx, plain)
    if found is None:
        report = dict(plain, accuracy_control=record)
        report["failures"] = list(plain["failures"]) + [
            f"accuracy control: {record['stopped']} (steps in accuracy_control)"]
        return files, tool, img_s, report
    report = dict(found.report, accuracy_control=record)
    tool = (f"nncf PTQ + accuracy control (kept fp32: {', '.join(record['kept_groups'])}) "
            f"+ openvino {_version('openvino')}")
    return found.files, tool, found.img_s, report


def auto_precisions(flags: Sequence[str], cuda: bool,
                    backend: Optional[str] = None) -> List[str]:
    """The precisions ``quasar optimize --precision auto`` builds: those this machine runs
    faster than fp32 (int8: VNNI, bf16: AVX512_BF16 / AMX, fp16: CUDA - the rule
    ``quasar score --precision auto`` applies), on ``backend`` when one is given."""
    from quasar.export.precision import BUILDERS, DEFAULT_BACKENDS
    from quasar.runtime.backends import runs_fast

    return [p for p in ("int8", "bf16", "fp16") if runs_fast(p, flags, cuda)
            and (p, backend or DEFAULT_BACKENDS[p]) in BUILDERS]


def optimize_auto(optimize_one: Callable[..., None], *, backend: Optional[str] = None,
                  fast_decode: bool = False, bundle: str = "", **kw: Any) -> None:
    """``quasar optimize --precision auto``: build and gate every precision this machine
    runs fast (int8 with the accuracy-controlled search), each through ``optimize_one``
    (:func:`quasar.export.precision.optimize`), writing each one that passes; ``quasar score
    --precision auto`` then picks among them by measured speed. Refused (exit 4, bundle
    unchanged) when none passes."""
    from quasar.errors import GateRefusedError, MissingDependencyError, VariantError
    from quasar.runtime.backends import cpu_flag_list, cuda_usable

    if fast_decode:
        raise VariantError("--fast-decode is gated on its own: run `quasar optimize BUNDLE "
                           "--fast-decode ...` and `--precision auto` separately")
    todo = auto_precisions(cpu_flag_list(), cuda_usable(), backend)
    if not todo:
        raise VariantError(
            "--precision auto: this machine runs no reduced precision faster than fp32 (int8 "
            "needs VNNI, bf16 AVX512_BF16 or AMX, fp16 a CUDA device)"
            + (f" on backend {backend}" if backend else "") + "; the fp32 encoder is the "
            "fastest here")
    passed, refused = [], []
    for p in todo:
        print(f"quasar optimize --precision auto: building {p}")
        try:
            optimize_one(bundle=bundle, precision=p, backend=backend, fast_decode=False, **kw)
            passed.append(p)
        except GateRefusedError as exc:
            refused.append(f"{p}: {exc}")
        except MissingDependencyError as exc:
            refused.append(f"{p}: skipped ({exc})")
    if not passed and all(r.endswith(")") and ": skipped (" in r for r in refused):
        raise MissingDependencyError("--precision auto: " + "; ".join(refused))
    if not passed:
        raise GateRefusedError(f"--precision auto: no variant passed the gate; bundle {bundle} "
                               "unchanged (" + "; ".join(refused) + ")")
    print(f"--precision auto: written {', '.join(passed)}"
          + (f"; refused {'; '.join(refused)}" if refused else "")
          + ". `quasar score --precision auto` picks the fastest on the machine it runs on")
