import pandas as pd
import pytest

from cxrgen.render.index import compute_costs, read_benchmarks, write_index


def write_bench(path, s, cpu):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"s": [s], "h:m:s": ["0:00:00"], "max_rss": [100.0], "cpu_time": [cpu]}).to_csv(path, sep="\t", index=False)


def test_costs_follow_zafar_formula(tmp_path):
    write_bench(tmp_path / "foundation.tsv", 3600.0, 7200.0)
    write_bench(tmp_path / "data" / "sample_train.tsv", 10.0, 3600.0)
    costs = compute_costs(read_benchmarks(tmp_path), gpu_jobs={"foundation"}).set_index("job")
    # Zafar V.C: 40 h x 300 W x 0.3 kg/kWh = 3.6 kg; here 1 GPU h -> 0.3 kWh (+ 2 CPU h x 10 W)
    assert costs.loc["foundation", "gpu_h"] == pytest.approx(1.0)
    assert costs.loc["foundation", "energy_kwh"] == pytest.approx(0.3 + 0.02)
    assert costs.loc["foundation", "carbon_kg"] == pytest.approx(0.32 * 0.3)
    assert costs.loc["data/sample_train", "gpu_h"] == 0.0
    assert costs.loc["data/sample_train", "energy_kwh"] == pytest.approx(0.01)
    assert compute_costs(read_benchmarks(tmp_path), accounting={"carbon_kg_per_kwh": 0.0})["carbon_kg"].sum() == 0.0


def test_index_lists_items_and_totals(tmp_path):
    write_bench(tmp_path / "b" / "x.tsv", 5.0, 5.0)
    out = tmp_path / "README.md"
    write_index(out, [{"path": "results/t.csv", "rule": "vae_study", "description": "VAE table"}], tmp_path / "b", "miniature", ["config.yaml"])
    text = out.read_text()
    assert "| `results/t.csv` | `vae_study` | VAE table |" in text
    assert "**miniature**" in text and "not the papers' own" in text
    assert "| **total** | 5 |" in text
    assert text.split("| **total** |")[1].splitlines()[0].endswith("| max 100 (`x`) |")  # the largest peak RSS, named
