"""``cxrgen``: the package's functions from a shell, without Snakemake.

    cxrgen sample --adapter results/default/models/adapted/ti_object -p "a photo of a lung xray" -n 4 --out samples/
    cxrgen sample --foundation results/default/models/foundation -p "0.3*healthy lung xray AND 0.7*pleural effusion" ...
    cxrgen fid real_images/ synthetic_images/ --extractor inception        (and `cxrgen kid`)
    cxrgen chexpert-at-k reports.csv --encoder minilm
    cxrgen evaluate-classifier results/default/models/reference_classifier TEST_SAMPLE --look dataset --look washed
    cxrgen info results/default/models/cheff/cascade

Each command is a thin layer over the package (``cxrgen.adapt.pipeline``, ``cxrgen.sampling.composable``,
``cxrgen.sampling.synthetic_sets.generate_set``, ``cxrgen.metrics``, ``cxrgen.text``, ``cxrgen.classify``,
``cxrgen.models.artefacts``).
Bad input (a wrong path, a bad value) ends with exit status 2 and one line naming it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from cxrgen.errors import InputError, WeightsUnavailableError

log = logging.getLogger("cxrgen")
_NAMED_PROMPT = re.compile(r"^([A-Za-z0-9_-]+)=(.+)$", re.DOTALL)


def _out(text: str) -> None:
    """A command's result goes to stdout (logs go to stderr)."""
    sys.stdout.write(text.rstrip("\n") + "\n")


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer >= 1")
    return n


# ------------------------------------------------------------------------------------------------ sample
def _prompts(texts: list[str]) -> dict[str, str]:
    """``NAME=TEXT`` or ``TEXT`` (named prompt0, prompt1, ...) -> {name: text}."""
    out: dict[str, str] = {}
    for i, text in enumerate(texts):
        m = _NAMED_PROMPT.match(text)
        name, prompt = (m.group(1), m.group(2)) if m else (f"prompt{i}", text)
        if name in out:
            raise InputError(f"prompt name {name!r} given twice; expected distinct names")
        out[name] = prompt
    return out


def _load_model(foundation, adapters: list[str], scheduler):
    from cxrgen.adapt.pipeline import load_adapted_pipeline, read_adapter
    from cxrgen.sampling.composable import ComposingPipeline, load_embeddings_pipeline

    if foundation is None and not adapters:
        raise InputError("no model given; expected --foundation FOLDER_OR_HUB_ID and/or --adapter FOLDER")
    if len(adapters) > 1 and {read_adapter(a)["method"] for a in adapters} == {"textual_inversion"}:
        # several learned tokens in one pipeline, for prompts that compose them
        from cxrgen.adapt.adapter_file import resolve_foundation

        if foundation is None:
            foundation = resolve_foundation(read_adapter(adapters[0])["foundation"], adapters[0])
        return ComposingPipeline(load_embeddings_pipeline(foundation, adapters, scheduler=scheduler))
    target = adapters if len(adapters) > 1 else (adapters[0] if adapters else None)  # several: a LoRA stack
    return ComposingPipeline(load_adapted_pipeline(foundation, target, scheduler=scheduler))


def cmd_sample(args) -> None:
    from cxrgen.sampling.synthetic_sets import generate_set

    prompts = _prompts(args.prompt)
    model = _load_model(args.foundation, args.adapter or [], args.scheduler)
    manifest = generate_set(model, prompts, args.n, args.seed, args.out, steps=args.steps, guidance=args.guidance,
                            batch_size=args.batch_size, height=args.height, method=args.name,
                            progress=not args.quiet)
    _out(f"wrote {len(manifest)} images and manifest.csv to {args.out}")


# ------------------------------------------------------------------------------------------------ fid / kid
def _extractor(args):
    from cxrgen.metrics.features import get_extractor

    if args.extractor != "reference":
        return get_extractor(args.extractor)
    if not args.classifier:
        raise InputError("--extractor reference needs --classifier (a reference classifier folder or "
                         "xrv:<weights>); expected e.g. --classifier results/default/models/reference_classifier")
    from cxrgen.classify.reference import load_reference_classifier
    from cxrgen.metrics.features import make_fid_extractor

    return make_fid_extractor("reference", classifier=load_reference_classifier(args.classifier))


def cmd_distance(args) -> None:
    from cxrgen.data.sampling import load_image_folder
    from cxrgen.metrics.fid import fid_kid_with_ci

    real, fake = load_image_folder(args.real), load_image_folder(args.fake)
    ext = _extractor(args)
    r = fid_kid_with_ci(ext(real), ext(fake), n_boot=args.n_boot, seed=args.seed, kid_subset_size=args.kid_subset_size)
    r["extractor"] = getattr(ext, "name", args.extractor)
    if args.json:
        _out(json.dumps(r, default=float))
        return
    pct = 100 - 5  # fid_kid_with_ci's default alpha = 0.05
    if args.command == "fid":
        value = f"FID {r['fid']:.4g} ({pct}% CI {r['fid_ci_low']:.4g}-{r['fid_ci_high']:.4g})"
    else:
        value = (f"KID {r['kid']:.4g} +- {r['kid_std']:.2g} ({pct}% CI {r['kid_ci_low']:.4g}-{r['kid_ci_high']:.4g}; "
                 f"subsets of {r['kid_subset_size']})")
    # KID's MMD^2 estimate is unbiased at any n; FID's is not below the feature dimension
    note = "; biased: fewer images than feature dimensions" if r["fid_biased"] and args.command == "fid" else ""
    _out(f"{value}; n_real={r['n_real']}, n_fake={r['n_fake']}, extractor={r['extractor']} "
         f"(dim {r['dim']}), n_boot={r['n_boot']}{note}")


# ------------------------------------------------------------------------------------------------ classifier
def cmd_evaluate_classifier(args) -> None:
    import numpy as np
    import pandas as pd

    from cxrgen.classify.reference import evaluate_folder, load_reference_classifier
    from cxrgen.models.corpus import in_xray_look

    clf = load_reference_classifier(args.classifier)
    for label in args.label or []:  # before any inference; the classifier's own check knows its aliases
        clf.label_index(label)

    def redraw(look):
        if look == "dataset":
            return None
        return lambda image, _: np.rint(255 * in_xray_look(image.astype(np.float32) / 255, look)).astype(np.uint8)

    tables = [evaluate_folder(clf, args.folder, args.label, args.n_boot, args.seed, transform=redraw(look))
              .assign(look=look) for look in args.look or ["dataset"]]
    table = pd.concat(tables, ignore_index=True)
    if args.out:
        from cxrgen.io import write_csv_atomic

        write_csv_atomic(table, args.out)
    for row in table.itertuples():
        ci = "" if np.isnan(row.auc_ci_low) else f" (95% CI {row.auc_ci_low:.3f}-{row.auc_ci_high:.3f})"
        _out(f"{row.label} [{row.look}]: AUC {row.auc:.3f}{ci}; n={row.n}, prevalence {row.prevalence:.2f}")


# ------------------------------------------------------------------------------------------------ chexpert@k
def cmd_chexpert_at_k(args) -> None:
    import pandas as pd

    from cxrgen.studies.text_encoder import run_text_encoder_study

    path = Path(args.reports)
    if not path.is_file():
        raise InputError(f"reports CSV {path} does not exist; expected a CSV with an 'impression' column and the 14 "
                         "CheXpert label columns")
    reports = pd.read_csv(path, keep_default_na=False, na_values=[""])
    spec = {"name": args.encoder, "path": args.encoder_path, "methods": args.method,
            "trust_remote_code": args.trust_remote_code}
    try:
        res = run_text_encoder_study(reports, [spec], k=args.k, same_label=args.same_label, n_boot=args.n_boot,
                                     seed=args.seed, similarity=args.similarity)
    except InputError as exc:  # e.g. missing label columns: say which file
        raise InputError(f"{path}: {exc}") from exc
    if args.out:
        from cxrgen.io import write_csv_atomic

        write_csv_atomic(res.table2.reset_index(), args.out)
    _out(f"CheXpert@{args.k} (macro, %, {args.same_label} labels, {res.n_reports} reports; "
         f"dropped {res.n_dropped_empty} without impression, {res.n_dropped_unlabelled} unlabelled)")
    _out(res.table2.round(2).to_string())
    _out(f"bag-of-words baseline: {res.table3.loc['Macro'].iloc[0]:.2f}")


# ------------------------------------------------------------------------------------------------ info
def cmd_info(args) -> None:
    from cxrgen.models.artefacts import describe
    from cxrgen.models.card import CARD_FILE, read_model_card

    art = describe(args.folder)
    _out(f"{art.folder}: {art.kind}" + (f" (method {art.method})" if art.method else ""))
    _out(art.description)
    if (art.folder / CARD_FILE).is_file():
        card = read_model_card(art.folder)
        for key in ("base_model", "library_name", "data", "metrics", "intended_use"):
            if card.get(key):
                _out(f"{key}: {json.dumps(card[key], default=str)}")
    else:
        _out(f"(no model card: {CARD_FILE} missing)")
    _out("load it with:\n" + art.load)


# ------------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    from cxrgen.adapt.pipeline import SCHEDULERS
    from cxrgen.metrics.features import available_extractors
    from cxrgen.models.corpus import XRAY_LOOKS
    from cxrgen.text.chexpert_at_k import SAME_LABEL_RULES
    from cxrgen.text.encoders import METHODS

    p = argparse.ArgumentParser(prog="cxrgen", description=__doc__.split("\n\n")[0])
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sample", help="generate images from a foundation and/or adapters; PNGs + manifest.csv")
    s.add_argument("--foundation", help="foundation folder, hub id or registry name (default: the one the adapter "
                                        "names)")
    s.add_argument("--adapter", action="append", help="adapter folder (any method); repeat for several "
                                                      "textual-inversion tokens or a LoRA stack")
    s.add_argument("-p", "--prompt", action="append", required=True,
                   help="prompt text or NAME=TEXT; weighted composition: '0.3*<healthy> AND 0.7*<effusion>'")
    s.add_argument("-n", type=_positive, default=4, help="images per prompt (default 4)")
    s.add_argument("--seed", type=int, default=0, help="image i of a prompt starts from the noise of seed + i")
    s.add_argument("--out", required=True, help="output folder (written atomically)")
    s.add_argument("--steps", type=_positive, default=20)
    s.add_argument("--guidance", type=float, default=4.0)
    s.add_argument("--batch-size", type=_positive, default=8)
    s.add_argument("--height", type=int, default=None, help="image side (default: the model's native size)")
    s.add_argument("--scheduler", choices=sorted(SCHEDULERS), default=None,
                   help="sampler (default: the foundation's own)")
    s.add_argument("--name", default=None, help="model name in the manifest (default: the adapter's method)")
    s.set_defaults(func=cmd_sample)

    for name, what in (("fid", "Frechet distance"), ("kid", "kernel inception distance")):
        d = sub.add_parser(name, help=f"{what} of two image folders with its bootstrap CI")
        d.add_argument("real", help="folder of real images (a sample folder with manifest.csv, or PNG/JPEG files)")
        d.add_argument("fake", help="folder of generated images")
        d.add_argument("--extractor", default="inception", choices=available_extractors(),
                       help="feature extractor (default inception; reference needs --classifier)")
        d.add_argument("--classifier", help="for --extractor reference: classifier folder or xrv:<weights>")
        d.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples of the CI (0: none)")
        d.add_argument("--kid-subset-size", type=_positive, default=1000)
        d.add_argument("--seed", type=int, default=0)
        d.add_argument("--json", action="store_true", help="print every field of the result as JSON")
        d.set_defaults(func=cmd_distance)

    c = sub.add_parser("chexpert-at-k", help="CheXpert@k of a text encoder on a reports CSV (Chambon Table 2)")
    c.add_argument("reports", help="CSV with 'impression' and the 14 CheXpert label columns (1/0/-1/blank)")
    c.add_argument("--encoder", default="minilm", help="text-encoder registry name (default minilm)")
    c.add_argument("--encoder-path", help="local folder of the encoder's weights")
    c.add_argument("--method", action="append", choices=METHODS, help="embedding method(s) (default all)")
    c.add_argument("--trust-remote-code", action="store_true")
    c.add_argument("-k", type=_positive, default=10)
    c.add_argument("--same-label", choices=SAME_LABEL_RULES, default="exact")
    c.add_argument("--similarity", choices=("dot", "cosine"), default="dot")
    c.add_argument("--n-boot", type=int, default=1000)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", help="also write the table as CSV here")
    c.set_defaults(func=cmd_chexpert_at_k)

    e = sub.add_parser("evaluate-classifier", help="per-label AUC with its bootstrap CI of a classifier on a sample "
                                                   "folder, its images as drawn or redrawn in another look")
    e.add_argument("classifier", help="reference classifier folder or xrv:<weights>")
    e.add_argument("folder", help="a materialised sample folder (images + manifest.csv with label columns)")
    e.add_argument("--label", action="append", help="label to score; repeat (default: every label the manifest has)")
    e.add_argument("--look", action="append", choices=XRAY_LOOKS,
                   help="draw the images in this look first (the foundation corpus's xray_look); repeat to compare "
                        "(default: dataset, as drawn)")
    e.add_argument("--n-boot", type=int, default=1000)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", help="also write the table as CSV here")
    e.set_defaults(func=cmd_evaluate_classifier)

    i = sub.add_parser("info", help="what a model folder is and how to load it")
    i.add_argument("folder")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (InputError, WeightsUnavailableError) as exc:
        message = " ".join(str(exc).split())  # one line
        sys.stderr.write(f"cxrgen {args.command}: error: {message}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
