"""The model card (``README.md``) that ``quasar push`` uploads with a bundle.

Written from the verified bundle only (its manifest, anchor recipes and variant records) plus
the catalogue's licence where it knows one, so a card never claims more than the bundle
holds: model id, provenance, the weights' licence, the export's parity report, the
preprocessing per resolution, the anchor sets, every precision variant with its gate report,
and the two commands that score with the bundle on a machine without torch.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from quasar.errors import UnknownModelError, install_hint
from quasar.models.catalog import get_model_spec

from .io import Bundle

# Weights licences by pretrained tag, for catalogue entries that do not carry one themselves
# (OpenAI CLIP and open_clip's LAION weights: MIT; DINOv2: Apache-2.0).
LICENCE_OF_TAG = {"openai": "mit", "laion2b_s32b_b82k": "mit", "laion2b_s32b_b79k": "mit",
                  "laion2b_s39b_b160k": "mit", "mscoco_finetuned_laion2b_s13b_b90k": "mit",
                  "lvd142m": "apache-2.0"}


UNKNOWN_LICENCE = "unknown to the QUASAR catalogue; see the provenance below"


def weights_licence(model_id: str) -> Optional[str]:
    """The weights' licence (SPDX id, lower case) when the catalogue knows it, else None."""
    try:
        spec = get_model_spec(model_id)
    except (UnknownModelError, KeyError, ValueError):
        return None
    return getattr(spec, "license", None) or LICENCE_OF_TAG.get(spec.tag)


def _cell(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return text.replace("|", "\\|").replace("\n", " ")[:300]


def _table(rows: Dict[str, Any], empty: str) -> List[str]:
    if not rows:
        return [empty]
    return ["| key | value |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in rows.items()]


def _variants(bundle: Bundle) -> List[str]:
    variants = bundle.manifest.variants
    if not variants:
        return ["None: the bundle has only its fp32 encoder (`--precision fp32`, exact)."]
    out = ["| name | kind | precision | backend | gate passed | gate thresholds | report |",
           "|---|---|---|---|---|---|---|"]
    for name, v in variants.items():
        out.append(f"| {name} | {v.kind} | {v.precision} | {v.backend} | "
                   f"{'yes' if v.passed else 'NO (refused at run time)'} | {_cell(v.gate)} | "
                   f"{_cell(v.report)} |")
    return out


def _anchors(bundle: Bundle) -> List[str]:
    if not bundle.anchors:
        return ["None."]
    return [f"- `{name}`: {_cell(bundle.recipes.get(name) or {})}" for name in bundle.anchors]


def _preprocess(bundle: Bundle) -> List[str]:
    out = ["| resolution | resize | size | crop | interpolation | mean | std |",
           "|---|---|---|---|---|---|---|"]
    for res, cfg in bundle.manifest.preprocess.items():
        d = cfg.to_dict()
        default = " (default)" if res == bundle.manifest.default_resolution else ""
        out.append(f"| {res}{default} | {d.get('resize_mode')} | {d.get('size')} | "
                   f"{d.get('crop')} | {d.get('interpolation')} | {_cell(d.get('mean'))} | "
                   f"{_cell(d.get('std'))} |")
    return out


def model_card(bundle: Bundle, url: str) -> str:
    """README.md text for ``bundle`` published at ``url`` (``hf://ORG/REPO`` or a folder URL)."""
    m = bundle.manifest
    lic = weights_licence(m.model)
    extra = "hub" if url.startswith("hf://") else {"s3": "s3", "gs": "gcs"}.get(
        url.split("://")[0], "remote")
    front = ["---", "library_name: quasar", "tags:", "- image-quality-assessment", "- onnx",
             "- quasar"] + ([f"license: {lic}"] if lic else []) + ["---", ""]
    warn = ([">  **RANDOMLY INITIALISED WEIGHTS: the scores of this bundle carry NO quality "
             "meaning** (tests and speed measurements only).", ""] if m.random_init else [])
    enc = m.encoder
    body = [
        f"# QUASAR bundle: {m.model}", "", *warn,
        "A self-describing [QUASAR](https://arxiv.org/abs/2403.06866) bundle: the image "
        "tower as ONNX, the quality anchors, preprocessing and checksums. Scoring needs ONNX "
        "Runtime only (no torch).", "",
        "## Score with it", "", "```bash",
        install_hint(f"cpu,{extra}"),
        f"quasar score photos/ --bundle {url} -o scores.csv", "```", "",
        f"Python: `Scorer.from_bundle(\"{url}\")`. The files are fetched once into "
        "`$QUASAR_HOME/remote`, verified against `bundle.json`'s sha256 list, and reused "
        "offline (`QUASAR_OFFLINE=1`).", "",
        "## Model", "",
        f"- model id: `{m.model}` (family {m.family})",
        f"- encoder: `{enc.file}`, {enc.precision}, embedding dim {enc.embed_dim}, "
        + ("any input size" if enc.dynamic_hw else f"{enc.input_size}x{enc.input_size} input"),
        f"- weights licence: {lic.upper() if lic else UNKNOWN_LICENCE}",
        f"- bundle schema {m.schema_version}; content sha256 `{bundle.sha256}`", "",
        "## Provenance", "", *_table(m.provenance, "Not recorded."), "",
        "## Parity report (ONNX vs torch, at export)", "",
        *_table(m.parity, "Not recorded."), "",
        "## Preprocessing", "", *_preprocess(bundle), "",
        "## Anchor sets", "", *_anchors(bundle), "",
        "## Precision variants", "", *_variants(bundle), "",
        "## Files", "", "| file | sha256 |", "|---|---|",
        *[f"| {n} | `{d}` |" for n, d in sorted(m.files.items())], "",
    ]
    return "\n".join(front + body)
