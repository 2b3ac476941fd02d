"""Report text: CheXpert@k retrieval metric, text encoders and the text-encoder study (Chambon et al. 2.4/3.3)."""
