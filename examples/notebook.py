"""The notebook workflow: analyze a run, read it as a pandas table, draw a figure. Each `# %%` block is a
notebook cell (VS Code and Jupytext run them as such); as a script:

    python examples/notebook.py sample_checkpoints/modadd-wd1 figures/

tests/test_api.py runs it on a small series.
"""

import sys
from pathlib import Path

import specdyn
from specdyn.plots import PLOTS, style


def main(run_dir: Path, out_dir: Path) -> dict:
    # %% Analyze the checkpoints once into RUN_DIR/specdyn.zarr (a rerun only adds new checkpoints)
    summary = specdyn.analyze([run_dir], options=specdyn.AnalyzeOptions(topk=32), show_progress=False)
    st = specdyn.open_store(run_dir)

    # %% One row per (checkpoint, matrix): run, step, checkpoint, matrix, label, kind, layer, then the metrics
    df = st.to_dataframe(metrics=["effective_rank", "stable_rank", "alpha"])
    by_kind = df.groupby(["step", "kind"])["effective_rank"].mean().unstack("kind")
    print(by_kind.round(3).tail())

    # %% Matrices by the names figures print (or any short form naming one of them)
    in_proj = st.to_dataframe(metrics="effective_rank", matrices="in_proj")

    # %% A figure: effective rank and alpha of every matrix, with the run's loss on a right-hand axis
    fig = PLOTS["metrics"]([st], metric=["effective_rank", "alpha"])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = style.save(fig, out_dir / "metrics.png", dpi=110)
    return {"summary": summary, "table": df, "by_kind": by_kind, "in_proj": in_proj, "figure": path}


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else "."))
