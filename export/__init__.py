"""Export: catalogue encoder -> verified ONNX bundle (needs torch, open_clip, timm, onnx).

Entry point: :func:`quasar.export.bundle.export_bundle`. Submodules import torch, so this
package ``__init__`` stays empty of imports (``quasar.export.cli`` must stay light).
"""
