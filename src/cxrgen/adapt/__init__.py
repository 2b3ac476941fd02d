"""Adaptation of a text-to-image foundation model to chest X-rays: the method registry (``methods``: one entry per
method, the list the schema, workflow, loader and report follow), the methods' settings (``config``, torch-free), a
shared resumable training loop (``trainer``), textual inversion, U-Net fine-tuning with or without prior preservation,
DreamBooth + LoRA, full fine-tuning, textual projection, and loading the resulting adapters back into a pipeline
(``pipeline``)."""
