"""Foundation model builder, tokenizer, corpus and the model-loading registry."""

from cxrgen.models.registry import MODEL_REGISTRY, load_pipeline, resolve_model

__all__ = ["MODEL_REGISTRY", "resolve_model", "load_pipeline"]
