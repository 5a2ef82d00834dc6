"""The training loop written once (:class:`Solver`) and the config tree every stage shares."""
from hubbub.train.config import TrainConfig, load_train_config
from hubbub.train.solver import Solver

__all__ = ["Solver", "TrainConfig", "load_train_config"]
