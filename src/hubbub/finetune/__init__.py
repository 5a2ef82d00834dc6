"""Finetuning stages: supervised PIT (and, later, audio-visual targets) on the shared trainer."""
from hubbub.finetune.pit import PITStage, finetune_pit

__all__ = ["PITStage", "finetune_pit"]
