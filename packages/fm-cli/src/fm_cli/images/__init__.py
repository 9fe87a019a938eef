"""What the image apps (fm-pixel, fm-latentgen) share beyond the rest of fm-cli: their run
configuration (:mod:`.config`), training wiring (:mod:`.training`: the flow-matching loss, the
metrics.json summary, the sample grids), sampling and scoring a run (:mod:`.sampling`) and their
``train``, ``sample`` and ``eval`` commands (:mod:`.commands`).

Unlike :mod:`fm_cli` itself this imports torch (through fm-core and fm-train).
"""

from .commands import (
    GRID_EVERY,
    add_eval_parser,
    add_sample_parser,
    add_train_parser,
    eval_command,
    sample_command,
    train_command,
)
from .config import (
    CONFIG_LAYOUT,
    COUPLINGS,
    SOLVERS,
    TIMES,
    ImageRunConfig,
    ImageTrainConfig,
    build_config,
    config_section,
    field_path,
    from_recipe,
    read_run,
)
from .sampling import check_label_guidance, eval_line, record_eval, sample_images
from .training import TrainSummary, column_labels, flow_loss, grid_layout, train_and_record, training_grids

__all__ = [
    "CONFIG_LAYOUT",
    "GRID_EVERY",
    "COUPLINGS",
    "SOLVERS",
    "TIMES",
    "ImageRunConfig",
    "ImageTrainConfig",
    "TrainSummary",
    "add_eval_parser",
    "add_sample_parser",
    "add_train_parser",
    "build_config",
    "check_label_guidance",
    "column_labels",
    "config_section",
    "eval_command",
    "eval_line",
    "field_path",
    "flow_loss",
    "from_recipe",
    "grid_layout",
    "read_run",
    "record_eval",
    "sample_command",
    "sample_images",
    "train_and_record",
    "train_command",
    "training_grids",
]
