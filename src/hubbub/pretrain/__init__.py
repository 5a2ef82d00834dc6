"""Pretraining stages on the shared trainer: MixIT (unsupervised) and codec-token prediction.

Both save what ``hubbub finetune pit --init RUN`` starts from: MixIT a separator with M outputs
(usable as is), codec tokens a backbone with its token head (dropped by finetuning).
"""
from hubbub.pretrain.codec import CodecStage, pretrain_codec
from hubbub.pretrain.mixit import MixITModel, MixITStage, pretrain_mixit

__all__ = ["CodecStage", "MixITModel", "MixITStage", "pretrain_codec", "pretrain_mixit"]
