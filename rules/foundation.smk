# The foundation text-to-image model: pretrained here (miniature) or taken from a registry name / local folder.


if config["foundation"]["model"] == "build":

    rule foundation:
        """Pretrain the miniature Stable-Diffusion-layout model on the generated general-domain corpus."""
        output:
            directory(FOUNDATION),
        params:
            settings=foundation_settings(),
            runtime=config["foundation"]["runtime"],
        log:
            f"{LOGS}/foundation.log",
        benchmark:
            f"{BENCHMARKS}/foundation.tsv"
        threads: workflow.cores
        resources:
            gpu=config["gpus"]["foundation"],
            mem_mb=4000,
            runtime=60,
        conda:
            "../envs/cxrgen.yaml"
        script:
            "../scripts/foundation.py"
