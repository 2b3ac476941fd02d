"""Runs: which papers' studies a config selects (``studies:``)."""

#: the papers a config's ``studies`` may select (schemas/config.schema.yaml lists the same names)
PAPERS = ("chambon2022", "weber2023", "zafar2023", "dewilde2023")
