"""Analysing runs and trained models, for notebooks and callbacks.

* :mod:`.loading` — :func:`load_runs` (one row per run: config, best/final metrics,
  checkpoints, W&B id; from run folders or W&B) and :func:`load_history` (metrics per step).
* :mod:`.inspection` — :func:`load_task` from a checkpoint, :func:`load_datamodule` from a
  run's config, DCK/deformable layers by type, receptive fields, offset fields, predictions.
* :mod:`.plots` — matplotlib figures of all of the above.

::

    from dck_lightning.analysis import load_runs, plot_ablation, plot_learning_curves

    runs = load_runs("runs")
    plot_learning_curves(runs, ["val/loss", "val/acc"], hue="model.init_args.backbone.init_args.dck")
    plot_ablation(runs, "model.init_args.backbone.init_args.dck", "best/val/acc")
"""

from .inspection import (
    LayerField,
    dck_layers,
    deform_layers,
    evaluate,
    layer_inputs,
    load_datamodule,
    load_task,
    per_class_metrics,
    position_fields,
    predict,
    receptive_field_table,
    sample_batch,
    short_name,
    to_display,
)
from .loading import (
    find_checkpoint,
    find_runs,
    flatten_config,
    load_config,
    load_history,
    load_runs,
    metric_mode,
    summary_table,
    varying_columns,
)
from .plots import (
    ablation_table,
    draw_predictions,
    figure_to_array,
    per_class_values,
    plot_ablation,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_offset_field,
    plot_per_class,
    plot_position_fields,
    plot_predictions,
    plot_receptive_fields,
    plot_sweep,
)

__all__ = [
    "LayerField",
    "ablation_table",
    "dck_layers",
    "deform_layers",
    "draw_predictions",
    "evaluate",
    "figure_to_array",
    "find_checkpoint",
    "find_runs",
    "flatten_config",
    "layer_inputs",
    "load_config",
    "load_datamodule",
    "load_history",
    "load_runs",
    "load_task",
    "metric_mode",
    "per_class_metrics",
    "per_class_values",
    "plot_ablation",
    "plot_confusion_matrix",
    "plot_learning_curves",
    "plot_offset_field",
    "plot_per_class",
    "plot_position_fields",
    "plot_predictions",
    "plot_receptive_fields",
    "plot_sweep",
    "position_fields",
    "predict",
    "receptive_field_table",
    "sample_batch",
    "short_name",
    "summary_table",
    "to_display",
    "varying_columns",
]
