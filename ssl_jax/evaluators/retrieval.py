"""Retrieval evaluator (configs/eval/retrieval.py): for each eval-split image in `queries`
('+'- or ','-separated indices), the `k` train-split images with the most cosine-similar final
features; with an `outdir`, the grid of queries and neighbours (retrieval.png)."""
from __future__ import annotations

import os
import re

from ssl_jax.evaluation.retrieval import nearest_neighbours, plot_retrieval_grid


def evaluate(inputs, settings, outdir: str | None = None) -> dict:
    _, data = inputs.needs_network("the retrieval evaluator")
    (gallery_x, gallery_y), (query_x, query_y) = inputs.train(), inputs.test()
    queries = [int(q) for q in re.split(r"[+,]", settings.queries) if q]
    bad = [q for q in queries if not 0 <= q < len(query_x)]
    if not queries or bad:
        raise ValueError(f"queries {bad or settings.queries!r} must be indices in "
                         f"[0, {len(query_x)}) of the {data.eval_split} split")
    idx, sims = nearest_neighbours(query_x[queries], gallery_x, k=settings.k)
    names = data.class_names
    if outdir:
        query_images = inputs.gather_images(data.eval_split, queries)
        found = inputs.gather_images(data.train_split, idx.ravel())
        plot_retrieval_grid(query_images, found.reshape(idx.shape + found.shape[1:]),
                            os.path.join(outdir, "retrieval.png"),
                            [names[query_y[q]] for q in queries],
                            [[names[gallery_y[j]] for j in row] for row in idx], sims)
    same = float((gallery_y[idx] == query_y[queries][:, None]).mean())
    rows = [{"query": q, "query_label": names[query_y[q]], "neighbours": idx[i].tolist(),
             "neighbour_labels": [names[gallery_y[j]] for j in idx[i]],
             "similarities": sims[i].tolist()} for i, q in enumerate(queries)]
    return {"k": settings.k, "same_label_fraction": same, "train_split": data.train_split,
            "eval_split": data.eval_split, "queries": rows}


def markdown(metrics: dict, settings) -> list[str]:
    del settings
    lines = [f"Top-{metrics['k']} cosine neighbours in `{metrics['train_split']}` of "
             f"`{metrics['eval_split']}` queries: `retrieval.png`. Neighbours sharing the "
             f"query's label: {100 * metrics['same_label_fraction']:.1f}%.", "",
             "| query | label | neighbours (label, cosine) |", "|---|---|---|"]
    return lines + [f"| {r['query']} | {r['query_label']} | " + ", ".join(
        f"{lab} {s:.2f}" for lab, s in zip(r["neighbour_labels"], r["similarities"])) + " |"
        for r in metrics["queries"]]
