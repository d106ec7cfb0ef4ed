"""The data wing: reading what ``--data`` names and preparing it once for training.

- :mod:`.load`: ``load_dataset``, which works out what ``--data`` names (a built-in set, IDX, CIFAR, a folder of
  images, a prepared set) and reads it;
- :mod:`.dataset`: ``ImageDataset``, the set every reader returns, and the checks on a request;
- :mod:`.formats`: IDX, CIFAR, the built-in digits and Fashion-MNIST;
- :mod:`.folders`: listing and decoding folders of images;
- :mod:`.prepared`: what a prepared set is, whether it is current, opening it as a memory map;
- :mod:`.preparing`: making one (``prepare_dataset``), and the data a training run reads.

Nothing here imports evaluation, training or the command line.
"""

from .dataset import ImageDataset
from .load import load_dataset
from .prepared import open_prepared
from .preparing import prepare_dataset

__all__ = ["ImageDataset", "load_dataset", "open_prepared", "prepare_dataset"]
