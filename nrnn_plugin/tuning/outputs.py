"""The files of a study: ``trials.csv``, ``best.yaml`` and ``front.png``, each written atomically.

* ``trials.csv``: one row per trial (number, state, baseline, ``param.<name>`` for every searched value, the
  metrics ``train_and_evaluate`` returned, ``seconds``, ``pareto``, ``chosen``).
* ``best.yaml``: the run file with the chosen ``noise:`` section (``nrnn train --config best.yaml``); without a
  run file, the ``noise:`` section, the searched ``params:`` and how they were chosen (``tune:``).
* ``front.png``: clean against perturbed validation metric for every finished trial, the Pareto front joined,
  the baseline and the chosen trial marked (needs matplotlib; skipped without it).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nrnn_plugin.tuning.selection import Choice
from nrnn_plugin.yaml_io import dump_yaml

__all__ = ["write_outputs", "best_document", "atomic_write"]


def atomic_write(path: Path, write: Any) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then move it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def best_document(chosen: Choice, run_file: Mapping[str, Any] | None) -> dict[str, Any]:
    """The mapping written to ``best.yaml``."""
    noise = {"enabled": False} if chosen.is_baseline else chosen.noise.to_dict()
    summary = {
        "trial": chosen.number,
        "rule": chosen.rule,
        "clean": chosen.clean,
        "perturbed": chosen.perturbed,
        "baseline_clean": chosen.baseline_clean,
        "baseline_perturbed": chosen.baseline_perturbed,
    }
    if run_file is not None:
        document = {k: v for k, v in run_file.items() if k != "tune"}
        document["noise"] = noise
        return document
    return {"noise": noise, "params": dict(chosen.params), "tune": summary}


def write_outputs(
    frame: Any,
    chosen: Choice,
    out: Path,
    *,
    run_file: Mapping[str, Any] | None,
    plot: bool,
    direction: str,
) -> list[Path]:
    files = [atomic_write(out / "trials.csv", lambda p: frame.to_csv(p, index=False))]
    document = best_document(chosen, run_file)
    header = (
        f"# chosen by nrnn tune: trial {chosen.number}; rule: {chosen.rule}\n"
        f"# validation clean {chosen.clean:.6g} (baseline {chosen.baseline_clean:.6g}), "
        f"perturbed {chosen.perturbed:.6g} (baseline {chosen.baseline_perturbed:.6g})\n"
    )
    files.append(atomic_write(out / "best.yaml", lambda p: p.write_text(header + dump_yaml(document))))
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return files
        files.append(atomic_write(out / "front.png", lambda p: plot_front(frame, p, direction=direction)))
    return files


def plot_front(frame: Any, path: Path, *, direction: str) -> None:
    """Scatter of clean against perturbed metric; the Pareto front joined; baseline and choice marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = frame[(frame["state"] == "COMPLETE") & frame["clean"].notna()]
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.scatter(done["clean"], done["perturbed"], s=22, color="0.6", label="trials")
    front = done[done["pareto"]].sort_values("clean")
    ax.plot(front["clean"], front["perturbed"], "-o", color="tab:blue", ms=5, label="Pareto front")
    base = done[done["baseline"]]
    ax.scatter(base["clean"], base["perturbed"], marker="s", s=60, color="black", label="noise-free (trial 0)")
    best = done[done["chosen"]]
    ax.scatter(best["clean"], best["perturbed"], marker="*", s=180, color="tab:red", label="chosen", zorder=5)
    better = "lower" if direction == "minimize" else "higher"
    ax.set_xlabel(f"clean validation metric ({better} is better)")
    ax.set_ylabel("validation metric under perturbation")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
