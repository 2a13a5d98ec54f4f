"""The model card of a registered version (Markdown, logged with the version): what the model is for,
what it learned from, how it scores — overall and per slice, beside the champion it was compared with —
how small it got, and where everything it came from is recorded."""

from __future__ import annotations

from typing import Any


def _number(value: Any) -> str:
    return "-" if value is None or value != value else f"{value:.4f}" if isinstance(value, float) else str(value)


def model_card(*, ctx: Any, version: int, run: dict[str, str], examples: Any, model: Any, evaluation: Any,
               slices: list[dict[str, Any]], optimized: Any) -> str:
    """`run`: lineage ids (dag_id, run_id, parent MLflow run, config path and sha256, kiln commit, snapshot)."""
    label = model.preprocessing.label
    metrics = evaluation.metrics
    champion = evaluation.champion_metrics or {}
    champion_name = f"champion v{evaluation.champion_version}" if evaluation.champion_version else None
    lines = [
        f"# {ctx.registered_model_name} v{version}",
        "",
        "## Intended use",
        "",
        ctx.description or "(no `description` in the pipeline YAML)",
        "",
        f"A {label.task} model predicting `{label.column}`"
        + (f" (classes: {', '.join(map(str, label.classes or []))})." if label.classes else "."),
        "Served by TF Serving's protocol with raw features by name: "
        + ", ".join(f"`{f.name}` ({f.kind})" for f in model.preprocessing.features) + ".",
        "",
        "## Data",
        "",
        f"* source: `{examples.source}` (sha256 `{examples.source_sha256[:16]}…`)",
        f"* rows: {examples.row_counts['train']:,} train, {examples.row_counts['eval']:,} eval "
        f"({examples.eval_percent} % by a hash of each row); {examples.rows_without_label:,} without a label dropped",
        "* missing values: " + (", ".join(f"`{c.name}` {c.missing:,}" for c in examples.columns if c.missing)
                                 or "none"),
        "",
        "## Metrics (eval split)",
        "",
        "| metric | this version | " + (f"{champion_name} |" if champion_name else "") ,
        "|---|--:|" + ("--:|" if champion_name else ""),
        *[f"| {name} | {_number(value)} | " + (f"{_number(champion.get(name))} |" if champion_name else "")
          for name, value in metrics.items()],
        "",
        f"**Blessed: {'yes' if evaluation.blessed else 'no'}.**",
        "",
        *[f"* {'pass' if c.passed else 'FAIL'}: {c.reason}" for c in evaluation.checks],
    ]
    if slices:
        headline = next(iter(metrics))
        lines += ["", "## Slices", "", f"| slice | examples | {headline} | " + (f"{champion_name} |" if champion_name else ""),
                  "|---|--:|--:|" + ("--:|" if champion_name else "")]
        lines += [f"| {s['slice']} | {s['examples']} | {_number(s['metrics'].get(headline))} | "
                  + (f"{_number((s['champion_metrics'] or {}).get(headline))} |" if champion_name else "")
                  for s in slices]
    lines += ["", "## Compression", "", f"SavedModel {optimized.saved_model_bytes:,} B. TFLite variants, measured "
              f"with LiteRT on the eval split:", "", optimized.table().rstrip()]
    lines += ["", "## Lineage", "", *[f"* {key}: `{value}`" for key, value in run.items() if value],
              f"* model: `{model.properties.model}` with hparams `{model.properties.hparams}`, "
              f"{model.properties.epochs} epochs on {model.properties.num_workers} worker(s)",
              *([f"* tuned: the best of {model.properties.tuning['trials']} trials of study "
                 f"`{model.properties.tuning['study']}`: `{model.properties.tuning['best']['params']}`"]
                if model.properties.tuning else []), ""]
    return "\n".join(lines)
