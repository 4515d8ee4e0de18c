"""The model catalogue (pure data; importing it never imports torch or onnxruntime)."""
from .catalog import CATALOG, DEFAULT_MODEL, ModelSpec, get_model_spec, list_models
from .preprocess import PreprocessCfg, resolution_cfg

__all__ = ["CATALOG", "DEFAULT_MODEL", "ModelSpec", "PreprocessCfg", "get_model_spec",
           "list_models", "resolution_cfg"]
