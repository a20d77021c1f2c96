"""Reusable Lightning callbacks for any LightningModule that holds PEFT LoRA layers."""

from svdlora_pl.callbacks.memory_monitor import MemoryMonitor
from svdlora_pl.callbacks.preemption import PreemptionCheckpoint
from svdlora_pl.callbacks.spectrum_monitor import LoRASpectrumMonitor
from svdlora_pl.callbacks.teacher_alignment import TeacherAlignmentMonitor

__all__ = ["LoRASpectrumMonitor", "MemoryMonitor", "PreemptionCheckpoint", "TeacherAlignmentMonitor"]
