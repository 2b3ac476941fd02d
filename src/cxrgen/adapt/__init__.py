"""Adaptation of a text-to-image foundation model to chest X-rays: a shared resumable training loop
(``trainer``), textual inversion, U-Net fine-tuning with or without prior preservation, textual
projection, and loading the resulting adapters back into a pipeline."""
