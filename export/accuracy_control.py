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
(each earlier group is given back to int8 when the gate still passes without it), then kept
only when it is faster than fp32; otherwise the plain report is returned, refused, with every
step tried. Why not NNCF's ``quantize_with_accuracy_control``: it ranks every quantiser by
re-validating the model once per quantiser (minutes to hours on RN50 / ViT-B-32 on a small
CPU) against a single scalar metric, while the gate has two thresholds per anchor set; a
short, ordered search with the gate itself as the validation is predictable and says which
layers stayed in fp32.
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
    record: Dict[str, Any] = {"method": "ordered fp32 ladder (NNCF ignored_scope), validated "
                                        "by the gate on the held-out images", "steps": steps}
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
