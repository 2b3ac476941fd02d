"""Datasets: the phantom generator, adapters to one table schema, preprocessing, sampling, prompts."""
