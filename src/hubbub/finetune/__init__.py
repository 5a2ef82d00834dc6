"""Finetuning stages on the shared trainer: supervised PIT, and audio-visual target-speaker
extraction (AV)."""
from hubbub.finetune.av import AVStage, finetune_av
from hubbub.finetune.pit import PITStage, finetune_pit

__all__ = ["AVStage", "PITStage", "finetune_av", "finetune_pit"]
