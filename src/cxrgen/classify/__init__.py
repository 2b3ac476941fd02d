"""Reference CXR classifiers used to score real, reconstructed and generated images."""

from cxrgen.classify.reference import (
    ReferenceClassifier,
    ReferenceClassifierConfig,
    cosine_similarity,
    evaluate_classifier,
    evaluate_folder,
    load_reference_classifier,
    train_reference_classifier,
    xrv_weights_path,
)

__all__ = [
    "ReferenceClassifier",
    "ReferenceClassifierConfig",
    "cosine_similarity",
    "evaluate_classifier",
    "evaluate_folder",
    "load_reference_classifier",
    "train_reference_classifier",
    "xrv_weights_path",
]
