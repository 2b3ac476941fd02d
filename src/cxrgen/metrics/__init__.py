"""Evaluation metrics: reconstruction quality, FID/KID with named feature extractors, classification with
bootstrap CIs, and paper-style summaries (Chambon et al. 2022, sec. 2.3 / 3.2)."""

from cxrgen.metrics.classification import binary_metrics, bootstrap_ci, choose_threshold, per_label_table
from cxrgen.metrics.features import (
    FeatureExtractor,
    InceptionExtractor,
    ReferenceExtractor,
    XRVExtractor,
    available_extractors,
    get_extractor,
    inception_weights_path,
    make_fid_extractor,
    register_extractor,
    xrv_weights_path,
)
from cxrgen.metrics.fid import (
    FID_KID_COLUMNS,
    batched_fid,
    batched_fid_from_features,
    fid,
    fid_kid_with_ci,
    frechet_distance,
    kernel_inception_distance,
    kid,
)
from cxrgen.metrics.image_quality import psnr, reconstruction_metrics, rmse, ssim
from cxrgen.metrics.summary import cosine_similarity_pairs, describe, format_mean_sd

__all__ = [
    "FID_KID_COLUMNS",
    "FeatureExtractor",
    "InceptionExtractor",
    "ReferenceExtractor",
    "XRVExtractor",
    "available_extractors",
    "batched_fid",
    "batched_fid_from_features",
    "binary_metrics",
    "bootstrap_ci",
    "choose_threshold",
    "cosine_similarity_pairs",
    "describe",
    "fid",
    "fid_kid_with_ci",
    "format_mean_sd",
    "frechet_distance",
    "get_extractor",
    "inception_weights_path",
    "make_fid_extractor",
    "kernel_inception_distance",
    "kid",
    "per_label_table",
    "psnr",
    "reconstruction_metrics",
    "register_extractor",
    "rmse",
    "ssim",
    "xrv_weights_path",
]
