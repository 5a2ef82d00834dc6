"""Separator models: Conv-TasNet, DPRNN, TF-GridNet and a global-local-attention U-Net.

Every model is a :class:`Separator` ``head(backbone(mix))``: mixture (B, T) or (B, 1, T) ->
sources (B, S, T), for any T. The backbone returns :class:`Features` (``frames`` (B, D, L) at
``backbone.frame_rate_hz(sample_rate_hz)``, plus what the model's own head needs); the head holds
everything that depends on the number of sources S, so a pretrained backbone loads under a head
with another S (:func:`load_backbone`) or under a different kind of head.

Example::

    from hubbub.models import build_model, model_config, save_model, load_model, load_backbone

    model = build_model("convtasnet", num_sources=2, **model_config("convtasnet", "debug"))
    est = model(torch.randn(4, 8000))                 # (4, 2, 8000)
    save_model(model, "ckpt")                         # config.json + model.safetensors
    same = load_model("ckpt")
    three = build_model("convtasnet", num_sources=3, **model_config("convtasnet", "debug"))
    load_backbone(three, "ckpt")                      # backbone.* loaded, head.* ignored

Models are plain ``nn.Module``s: device placement and distribution belong to the trainer.
"""
from hubbub.models.base import Backbone, Features, Separator
from hubbub.models.factory import CONFIGS, MODELS, build_model, model_config
from hubbub.models.io import LoadReport, load_backbone, load_model, save_model
from hubbub.models.profile import count_macs

__all__ = [
    "Backbone", "Features", "Separator", "CONFIGS", "MODELS", "build_model", "model_config",
    "LoadReport", "load_backbone", "load_model", "save_model", "count_macs",
]
