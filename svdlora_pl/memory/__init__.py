"""The memory plan of a training config on one device (``svdlora estimate-memory``), without loading any weights.

- :mod:`~svdlora_pl.memory.architecture`: the model's shape and exact parameter counts (built on the meta device).
- :mod:`~svdlora_pl.memory.presets`: where an architecture comes from without a download.
- :mod:`~svdlora_pl.memory.activations`: bytes saved for backward, logits and workspaces (the formulas).
- :mod:`~svdlora_pl.memory.plan`: the plan of one training step, and the largest sizes that fit a budget.
- :mod:`~svdlora_pl.memory.fit_setup`: a resolved ``svdlora fit`` config read into a training setup.
- :mod:`~svdlora_pl.memory.estimate`: all of it for one config (:func:`estimate_memory`);
  :mod:`~svdlora_pl.memory.table` prints the result.
"""

from svdlora_pl.memory.activations import TrainingSetup
from svdlora_pl.memory.architecture import Architecture, LoRASpec, ParameterCounts, count_parameters
from svdlora_pl.memory.estimate import estimate_memory
from svdlora_pl.memory.plan import MemoryPlan, largest_fitting, plan_memory
from svdlora_pl.memory.presets import PRESETS, resolve_architecture
from svdlora_pl.memory.table import format_table

__all__ = [
    "PRESETS",
    "Architecture",
    "LoRASpec",
    "MemoryPlan",
    "ParameterCounts",
    "TrainingSetup",
    "count_parameters",
    "estimate_memory",
    "format_table",
    "largest_fitting",
    "plan_memory",
    "resolve_architecture",
]
