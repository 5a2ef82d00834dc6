"""Pretraining stages (MixIT, codec tokens) on the shared trainer."""
