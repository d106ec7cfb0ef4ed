"""Training: ``train(TrainConfig(...))`` runs what ``ddpm train`` runs, in one process or under ``torchrun``.

- :mod:`.config`: ``TrainConfig``, every setting of a run (saved in each checkpoint; the CLI's flags).
- :mod:`.draws`: each step's random draws, a pure function of (seed, step): exact resume, W processes = W× batch.
- :mod:`.schedules`: the learning rate and the EMA over steps.
- :mod:`.setup`: the run directory, the networks (new, --init-from, resumed) and the resume checks.
- :mod:`.log`: metrics.jsonl, curves, sample grids, the progress bar.
- :mod:`.eval_hook`: the ``--eval-every`` score.
- :mod:`.loop`: ``train()`` and the loop, a ``_step`` and a ``_report``.
"""

from .config import TrainConfig
from .loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
