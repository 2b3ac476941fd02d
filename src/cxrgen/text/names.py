"""The names a text-encoder setting may take (encoders, pooling methods), apart from :mod:`cxrgen.text.encoders`
so that configs naming them can be checked without importing torch."""

from __future__ import annotations

#: pooling methods of a report embedding (Chambon et al. Table 2)
METHODS: tuple[str, ...] = ("cls", "mean", "pooler", "model_specific")
METHOD_TITLES = {
    "cls": "CLS hidden state",
    "mean": "Mean hidden states",
    "pooler": "Pooler output",
    "model_specific": "Model specific",
}


#: name -> where the paper-scale weights live. ``path`` in an encoder spec overrides the hub id.
TEXT_ENCODER_REGISTRY: dict[str, dict] = {
    "pubmedbert": {"hub_id": "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract-fulltext"},
    "clinicalbert": {"hub_id": "emilyalsentzer/Bio_ClinicalBERT"},
    "sapbert": {"hub_id": "cambridgeltl/SapBERT-from-PubMedBERT-fulltext"},
    "radbert": {"hub_id": "StanfordAIMI/RadBERT"},
    "cxr-bert-general": {"hub_id": "microsoft/BiomedVLP-CXR-BERT-general", "remote_code": True},
    "cxr-bert-specialized": {"hub_id": "microsoft/BiomedVLP-CXR-BERT-specialized", "remote_code": True},
    "clip": {"hub_id": "CompVis/stable-diffusion-v1-4", "subfolder": "text_encoder", "tokenizer_subfolder": "tokenizer"},
    "minilm": {"local": "minilm"},
    "foundation-clip": {"subfolder": "text_encoder", "tokenizer_subfolder": "tokenizer", "needs_path": True},
}
