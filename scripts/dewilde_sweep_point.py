from cxrgen.studies.dewilde import run_sweep_point
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    p, sw, inf = snakemake.params, snakemake.params.sweep, snakemake.params.inference
    # one point may serve several tables (the shared default point): the FID row is written per table
    import pandas as pd

    from cxrgen.io import write_csv_atomic

    point = p.points[0]
    frame = run_sweep_point(p.foundation, snakemake.input.embedding, snakemake.input.real, p.classifier,
                            snakemake.output.images, snakemake.output.fid, point, sw["n_generated"], sw["n_real"],
                            p.seed, scheduler=inf["scheduler"], batch_size=inf["batch_size"],
                            extractor=sw["fid_extractor"], progress=False, features_npz=snakemake.output.features,
                            fid_n_boot=p.evaluation["fid_n_boot"])
    rows = [frame.assign(**{k: q[k] for k in ("table", "sweep")}) for q in p.points]
    write_csv_atomic(pd.concat(rows, ignore_index=True), snakemake.output.fid)
    log.info("FID rows: %s", pd.concat(rows).to_dict("records"))
