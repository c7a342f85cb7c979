"""Which searched parameters drive the primary objective: fANOVA (Optuna's evaluator) over the
finished trials, written to the study run as importance/importance.{png,json} and metrics.

    values, how = importances(table, info)   # ({"optim.lr": 0.61, ...}, "fANOVA (Optuna) over 12 finished trials, ...")
    importance_png(values, out / "importance.png", "farnet")   # bars, importance_png_size(len(values)) px
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from mlflow.entities import Metric, RunTag

from dashboards.ranking import finite
from dashboards.store import StudyInfo
from dashboards.plots import IMPORTANCE_MAX_BARS, IMPORTANCE_PNG_W, figure, plt, prepare_path, save
from study.schema import Status
from study.search import distribution


def importances(table: pd.DataFrame, info: StudyInfo) -> tuple[dict[str, float], str]:
    """fANOVA importance of each searched parameter for the primary objective, over the finished
    trials (ASHA-stopped ones are left out: their values are partial). Only parameters sampled
    in every finished trial are assessed. -> ({param: importance}, a line saying what was done)."""
    primary, mode = info.objectives[0]
    done = table[(table["status"] == Status.FINISHED) & table[primary].map(finite)] if primary in table else table[:0]
    if len(done) < 3:
        return {}, f"{len(done)} finished trial(s) with {primary}; importance needs at least 3"
    params = [p for p in info.space if done[p].notna().all() and done[p].nunique() > 1]
    if not params:
        return {}, "no searched parameter was sampled, with different values, in every finished trial"
    dists = {p: distribution(info.space[p]) for p in params}
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    for _, row in done.iterrows():
        study.add_trial(
            optuna.trial.create_trial(
                params={p: _native(row[p], dists[p]) for p in params}, distributions=dists, value=float(row[primary])
            )
        )
    result = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=params
    )
    return dict(result), f"fANOVA (Optuna) over {len(done)} finished trials, for {primary} ({mode})"


def _native(value, dist):
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return next(c for c in dist.choices if c == value or str(c) == str(value))
    return int(value) if isinstance(dist, optuna.distributions.IntDistribution) else float(value)


def log_importance(client, info: StudyInfo, table: pd.DataFrame, folder: Path) -> str:
    """Compute, print and log the importance; -> the line saying what was done (or why not)."""
    values, how = importances(table, info)
    client.log_batch(info.run_id, tags=[RunTag("importance.method", how)])
    if not values:
        print(f"parameter importance: skipped ({how})", flush=True)
        return how
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "importance.json").write_text(
        json.dumps({"objective": info.objectives[0][0], "method": how, "importances": values}, indent=1)
    )
    primary, mode = info.objectives[0]
    importance_png(values, folder / "importance.png", f"{info.name}: what drives {primary} ({mode})", how)
    client.log_artifacts(info.run_id, str(folder), "importance")
    ranked = sorted(values.items(), key=lambda kv: -kv[1])
    print(f"parameter importance ({how}): " + ", ".join(f"{p} {v:.2f}" for p, v in ranked), flush=True)
    now, step = int(time.time() * 1000), int((table["status"] == Status.FINISHED).sum())
    client.log_batch(info.run_id, metrics=[Metric(f"importance/{p}", float(v), now, step) for p, v in values.items()])
    return how


def _text_px(fig: plt.Figure, texts: list[str], fontsize: float) -> int:
    """Widest rendered width of texts in px at fontsize."""
    renderer = fig.canvas.get_renderer()
    widest = 0.0
    for t in texts:
        artist = fig.text(0, 0, t, fontsize=fontsize)
        widest = max(widest, artist.get_window_extent(renderer).width)
        artist.remove()
    return math.ceil(widest)


def importance_png_size(n: int) -> tuple[int, int]:
    """(width, height) px of importance_png for n params: (800, 200 + 40·min(n, 30)), at most 800×1400."""
    return IMPORTANCE_PNG_W, 200 + 40 * min(max(n, 0), IMPORTANCE_MAX_BARS)


def importance_png(importances: dict[str, float], path, title: str, subtitle: str = "") -> Path:
    """Parameter importances as horizontal bars, largest at the top, importance_png_size(n) px.

    importances: dotted param name → importance (e.g. Optuna's fANOVA, summing to 1). Beyond
    IMPORTANCE_MAX_BARS params only the largest are drawn, and the title says so.
    """
    path = prepare_path(path)
    items = sorted(
        ((str(k), float(v)) for k, v in importances.items()),
        key=lambda kv: -kv[1] if math.isfinite(kv[1]) else math.inf,
    )
    shown = items[:IMPORTANCE_MAX_BARS]
    fig = figure(importance_png_size(len(items)))
    w, h = fig.bbox.width, fig.bbox.height
    left = min(400, 30 + _text_px(fig, [k for k, _ in shown], 10))  # room for the longest dotted name
    ax = fig.add_axes((left / w, 60 / h, 1 - (left + 70) / w, 1 - 120 / h))
    suffix = f" (top {IMPORTANCE_MAX_BARS} of {len(items)})" if len(items) > IMPORTANCE_MAX_BARS else ""
    fig.text(10 / w, 1 - 12 / h, title + suffix, ha="left", va="top", fontsize=14, fontweight="bold")
    if subtitle:
        fig.text(10 / w, 1 - 36 / h, subtitle, ha="left", va="top", fontsize=9, color="#444")
    ax.set_xlabel("importance")
    if not shown:
        ax.text(0.5, 0.5, "no importances", transform=ax.transAxes, ha="center", va="center", fontsize=14, color="#666")
        ax.set_yticks([])
        return save(fig, path)
    names = [k for k, _ in shown][::-1]  # barh draws bottom-up; the largest goes on top
    vals = np.array([v for _, v in shown][::-1])
    finite = np.where(np.isfinite(vals), vals, 0.0)
    bars = ax.barh(names, finite, color="#1f4e79", height=0.65)
    hi = max(float(finite.max()), 0.0)
    lo = min(float(finite.min()), 0.0)
    span = (hi - lo) or 1.0
    ax.set_xlim(lo - (0.02 * span if lo < 0 else 0), hi + 0.15 * span)
    for bar, v in zip(bars, vals):
        x = bar.get_width()
        ax.text(
            x + 0.01 * span if x >= 0 else x - 0.01 * span,
            bar.get_y() + bar.get_height() / 2,
            f"{v:.3g}" if math.isfinite(v) else "n/a",
            va="center",
            ha="left" if x >= 0 else "right",
            fontsize=9,
        )
    ax.tick_params(axis="y", labelsize=10)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return save(fig, path)
