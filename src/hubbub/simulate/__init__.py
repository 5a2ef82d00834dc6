"""Simulate reverberant, noisy multi-speaker mixtures (pyroomacoustics) into shards (Ray)."""
from hubbub.simulate.recipe import Recipe, load_recipe, preset_names
from hubbub.simulate.runner import simulate, simulate_rir_bank

__all__ = ["Recipe", "load_recipe", "preset_names", "simulate", "simulate_rir_bank"]
