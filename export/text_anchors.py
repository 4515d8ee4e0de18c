"""Text anchors: L2-normalised text embeddings of the prompts "Good photo." / "Bad photo."
(the reference's CLIP-IQA prompts) from the spec's own open_clip text tower."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from quasar.errors import ExportError
from quasar.models.catalog import ModelSpec
from quasar.constants import TEXT_ANCHOR_SET as TEXT_SET
from quasar.constants import TEXT_PROMPTS


def text_anchors(spec: ModelSpec, model: Optional[nn.Module],
                 prompts: Sequence[str] = TEXT_PROMPTS) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Return (float32 [len(prompts), D] unit rows, recipe) for a CLIP-family ``spec``.

    Row 0 is the good prompt, row 1 the bad one.
    """
    import open_clip

    if not spec.has_text_tower or model is None or not hasattr(model, "encode_text"):
        raise ExportError(f"{spec.id} has no text tower: text anchors need a CLIP model; "
                          "build image anchors from prompt data instead")
    tokenizer = open_clip.get_tokenizer(spec.source_name)
    tokens = tokenizer(list(prompts))
    with torch.no_grad():
        emb = model.encode_text(tokens).float()
    emb = emb / emb.norm(dim=-1, keepdim=True)
    arr = emb.cpu().numpy().astype(np.float32)
    if arr.shape != (len(prompts), spec.embed_dim):
        raise ExportError(f"{spec.id}: text embeddings have shape {arr.shape}, expected "
                          f"{(len(prompts), spec.embed_dim)}")
    recipe = {
        "kind": "text",
        "prompts": list(prompts),
        "tokenizer": f"open_clip.get_tokenizer({spec.source_name!r})",
        "source": f"open_clip {open_clip.__version__} {spec.source_name} encode_text",
        "normalised": "l2",
        "rows": ["good", "bad"],
    }
    return arr, recipe
