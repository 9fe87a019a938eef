"""What the fm-* command lines share: argument types with bounds, flags with one meaning, the
command skeletons (dispatch, ``--version``, one-line errors, exit codes, the train command's
tail), labelled picture grids and GIFs, sample files.

Modules: :mod:`fm_cli.argtypes`, :mod:`fm_cli.flags`, :mod:`fm_cli.app`, :mod:`fm_cli.train`,
:mod:`fm_cli.pictures`, :mod:`fm_cli.samples`, :mod:`fm_cli.progress`, :mod:`fm_cli.reflow` (reflow's
pairs and minibatches; imported on its own, it needs torch).
Importing fm_cli does not import torch (commands import what they need when they run).
"""

from . import argtypes, flags
from .app import Command, add_version, error, interrupted, one_line, run_cli, subparser
from .pictures import LABEL_HEIGHT, grid_array, grid_image, save_gif, save_grid, save_reconstructions
from .progress import progress, progress_enabled
from .samples import describe_labels, sample_summary, write_samples
from .train import (
    RunChoice,
    choose_run_dir,
    default_run_dir,
    nothing_left,
    resume_budget,
    resume_conflicts,
    run_training,
    trained_line,
)

__version__ = "0.3.0"

__all__ = [
    "LABEL_HEIGHT",
    "Command",
    "RunChoice",
    "add_version",
    "argtypes",
    "choose_run_dir",
    "default_run_dir",
    "describe_labels",
    "error",
    "flags",
    "grid_array",
    "grid_image",
    "interrupted",
    "nothing_left",
    "one_line",
    "progress",
    "progress_enabled",
    "resume_budget",
    "resume_conflicts",
    "run_cli",
    "run_training",
    "sample_summary",
    "save_gif",
    "save_grid",
    "save_reconstructions",
    "subparser",
    "trained_line",
    "write_samples",
]
