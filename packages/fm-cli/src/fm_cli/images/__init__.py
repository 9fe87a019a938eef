"""What the image apps (fm-pixel, fm-latentgen) share beyond the rest of fm-cli: their run
configuration (:mod:`.config`), training wiring (:mod:`.training`: the flow-matching loss, the
metrics.json summary, the sample grids, loss.png), sampling and scoring a run (:mod:`.sampling`),
the guidance sweep (:mod:`.sweep`) and their ``train``, ``sample`` and ``eval`` commands
(:mod:`.commands`).

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
from .sampling import (
    check_label_guidance,
    eval_line,
    record_eval,
    sample_images,
    sample_straightness,
    sampler_caption,
)
from .sweep import GUIDANCE_FILE, GuidanceSweep, guidance_sweep, record_sweep, sweep_table
from .training import (
    TrainSummary,
    column_labels,
    flow_loss,
    grid_layout,
    loss_picture,
    reflow_batches,
    teacher_draw,
    train_and_record,
    training_grids,
)

__all__ = [
    "CONFIG_LAYOUT",
    "GRID_EVERY",
    "GUIDANCE_FILE",
    "COUPLINGS",
    "SOLVERS",
    "TIMES",
    "ImageRunConfig",
    "ImageTrainConfig",
    "GuidanceSweep",
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
    "guidance_sweep",
    "loss_picture",
    "read_run",
    "record_eval",
    "record_sweep",
    "reflow_batches",
    "sample_command",
    "sample_images",
    "sample_straightness",
    "sampler_caption",
    "sweep_table",
    "teacher_draw",
    "train_and_record",
    "train_command",
    "training_grids",
]
