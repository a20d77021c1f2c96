"""Reusable Lightning callbacks for any LightningModule that holds PEFT LoRA layers, and the TensorBoard dashboard
that keeps their hundreds of per-layer tags navigable (tag names: :mod:`svdlora_pl.callbacks.tags`)."""

from svdlora_pl.callbacks.dashboard import DashboardLogger, TensorBoardDashboard
from svdlora_pl.callbacks.intruder_monitor import LoRAIntruderMonitor
from svdlora_pl.callbacks.memory_monitor import MemoryMonitor
from svdlora_pl.callbacks.preemption import PreemptionCheckpoint
from svdlora_pl.callbacks.spectrum_monitor import LoRASpectrumMonitor
from svdlora_pl.callbacks.teacher_alignment import TeacherAlignmentMonitor

__all__ = [
    "DashboardLogger",
    "LoRAIntruderMonitor",
    "LoRASpectrumMonitor",
    "MemoryMonitor",
    "PreemptionCheckpoint",
    "TeacherAlignmentMonitor",
    "TensorBoardDashboard",
]
