"""Reproduce the human reference numbers of 002 from the model-vs-human raw CSVs.

    .venv/bin/python benchmarks/human_data_check.py \
        --data ../shared/data/model-vs-human-raw --out outputs/human_data_check

Uses only ssl_jax's own functions (loader, error consistency, shape bias, plots) and writes:
  summary.json                  every number below
  human_robustness.png          human accuracy vs level for the 12 distortions (002 Fig. 1)
  human_shape_bias.png          per-category shape bias of each subject (002 Fig. 3)
  human_error_consistency_<experiment>.png   subject x subject kappa (002 Fig. 2, humans)
  human_confusion_uniform_noise.png          pooled human confusions per noise level (Fig. 4)
Published: human-vs-human mean kappa on cue-conflict 0.32 (002), human shape bias ~0.96.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from absl import flags  # noqa: E402
from ssl_jax import errors  # noqa: E402  (one-line errors, exit code 2)
from ssl_jax import host_memory, xla_flags  # noqa: E402
host_memory.restart_with_huge_pages(__name__)  # first: huge pages (ssl_jax/host_memory.py)
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)

from ssl_jax.evaluation import distortions as D, human_robustness  # noqa: E402
from ssl_jax.evaluation.confusion import confusion_matrix  # noqa: E402
from ssl_jax.evaluation import error_consistency as E  # noqa: E402
from ssl_jax.evaluation import shape_bias as S  # noqa: E402


def plot_robustness_grid(robustness: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 4, figsize=(13, 9))
    for ax, (family, r) in zip(axes.ravel(), robustness.items()):
        x = range(len(r["levels"]))
        for acc in r["per_subject"].values():
            ax.plot(x, acc, color="tab:red", alpha=0.25, linewidth=0.8)
        ax.plot(x, r["accuracy"], color="tab:red", marker="D", label="humans (pooled)")
        ax.set_xticks(list(x), [str(lv) for lv in r["levels"]], rotation=45, fontsize=7)
        ax.axhline(1 / 16, color="grey", linestyle=":", linewidth=0.8)
        ax.set_ylim(0, 1.02)
        ax.set_title(family, fontsize=9)
    axes[0, 0].set_ylabel("classification accuracy")
    axes[0, 0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cue_conflict_arrays(trials: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = {c: i for i, c in enumerate(S.HUMAN_CATEGORIES)}
    ts = list(trials.values())
    pred = np.array([idx.get(t["response"], -1) for t in ts])  # 'na' = no response
    shape = np.array([idx[t["category"]] for t in ts])
    texture = np.array([idx[E.cue_conflict_texture(t["imagename"])] for t in ts])
    return pred, shape, texture


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "model-vs-human-raw")


# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_string("data", DEFAULT_DATA,
                    "the model-vs-human raw-data folder (default: ../shared/data/"
                    "model-vs-human-raw next to the repository)", flag_values=FLAGS)
flags.DEFINE_string("out", "outputs/human_data_check", None, flag_values=FLAGS)


def main() -> None:
    args = errors.parse_script_flags(FLAGS, doc=__doc__)
    if not os.path.isdir(os.path.join(args.data, "cue-conflict")):
        raise errors.UserError(f"--data {args.data!r} is not the model-vs-human raw-data folder "
                               "(no cue-conflict/ in it); pass --data")
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    summary: dict = {}

    # Error consistency between human subjects (002 Fig. 2, hum-hum entries).
    summary["kappa"] = {}
    for experiment in ("cue-conflict", "edge", "silhouette"):
        subjects = E.load_human_trials(args.data, experiment)
        pairs = E.pairwise_consistency(subjects)
        vals = np.array(list(pairs.values()))
        summary["kappa"][experiment] = {"mean": float(vals.mean()), "std": float(vals.std()),
                                        "min": float(vals.min()), "max": float(vals.max()),
                                        "n_pairs": len(vals)}
        keys, correct = E.align_trials(subjects)
        names, matrix = E.error_consistency_matrix(correct)
        E.plot_error_consistency(names, matrix, {n: "hum" for n in names},
                                 os.path.join(args.out, f"human_error_consistency_{experiment}.png"),
                                 title=f"{experiment}: human error consistency "
                                       f"(mean {vals.mean():.3f}, {len(keys)} images)")
        if experiment == "cue-conflict":
            # Same, without the 80 stimuli whose shape and texture class coincide.
            conflicting = {s: {k: t for k, t in tr.items()
                               if E.cue_conflict_texture(t["imagename"]) != t["category"]}
                           for s, tr in subjects.items()}
            v2 = np.array(list(E.pairwise_consistency(conflicting).values()))
            summary["kappa"]["cue-conflict (shape != texture only)"] = {"mean": float(v2.mean())}

    # Human shape bias (002 Fig. 3).
    subjects = E.load_human_trials(args.data, "cue-conflict")
    per_subject, per_category = {}, {}
    pooled = [[], [], []]
    for subj, trials in sorted(subjects.items()):
        p, s, t = cue_conflict_arrays(trials)
        per_subject[subj] = S.shape_bias(p, s, t)
        per_category[subj] = S.shape_bias_per_category(p, s, t)
        for acc, a in zip(pooled, (p, s, t)):
            acc.append(a)
    p, s, t = (np.concatenate(a) for a in pooled)
    summary["shape_bias"] = {"pooled": S.shape_bias(p, s, t),
                             "mean_over_subjects": float(np.mean(list(per_subject.values()))),
                             "per_subject": per_subject,
                             "fractions": S.cue_decision_fractions(p, s, t)}
    S.plot_shape_bias(per_category, os.path.join(args.out, "human_shape_bias.png"),
                      categories=S.HUMAN_CATEGORIES, title="humans: shape bias per category")

    # Robustness curves and the uniform-noise confusion matrices (002 Figs. 1 and 4).
    robustness = human_robustness.human_robustness_curves(args.data)
    summary["robustness"] = {f: {"levels": [str(lv) for lv in r["levels"]],
                                 "accuracy": r["accuracy"],
                                 "n_trials": r["n_trials"]} for f, r in robustness.items()}
    plot_robustness_grid(robustness, os.path.join(args.out, "human_robustness.png"))

    noise = E.load_human_trials(args.data, "uniform-noise")
    idx = {c: i for i, c in enumerate(S.HUMAN_CATEGORIES)}
    levels = D.DISTORTION_LEVELS["uniform_noise"]
    mats, conc = [], {}
    for lv in levels:
        ts = [t for tr in noise.values() for t in tr.values()
              if human_robustness.human_condition_level("uniform_noise", t["condition"]) == lv]
        m = confusion_matrix(np.array([idx[t["category"]] for t in ts]),
                             np.array([idx.get(t["response"], -1) for t in ts]), 16,
                             skip_negative_preds=True)
        mats.append(m)
        conc[str(lv)] = D.response_concentration(m)
    summary["uniform_noise_response_concentration"] = conc
    D.plot_confusion_matrices(mats, [f"w={lv}" for lv in levels], S.HUMAN_CATEGORIES,
                              os.path.join(args.out, "human_confusion_uniform_noise.png"),
                              title="humans, uniform noise (rows: response, columns: truth)")

    summary["seconds"] = time.time() - t0
    with open(os.path.join(args.out, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    k = summary["kappa"]["cue-conflict"]["mean"]
    print(f"human-vs-human kappa, cue-conflict: {k:.3f} (published 0.32)")
    print(f"human shape bias: {summary['shape_bias']['pooled']:.3f} (published ~0.96)")
    for e in ("edge", "silhouette"):
        print(f"human-vs-human kappa, {e}: {summary['kappa'][e]['mean']:.3f}")
    print(f"wrote {args.out} in {summary['seconds']:.1f} s")


if __name__ == "__main__":
    errors.run(main)
