"""Report text: CheXpert@k retrieval metric and text encoders (Chambon et al. 2.4/3.3; the study itself is
:mod:`cxrgen.studies.text_encoder`)."""
