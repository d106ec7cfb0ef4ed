"""ddpm: denoising diffusion models trained on your own images, with exact math and fast samplers."""

from .cascade import Stage, cascade
from .checkpoint import load_checkpoint, load_model
from .data.dataset import ImageDataset
from .data.load import load_dataset
from .data.prepared import open_prepared
from .data.preparing import prepare_dataset
from .denoiser import image_generators
from .diffusion import (
    eps_from_v,
    eps_from_x0,
    prediction_to_x0_eps,
    q_posterior,
    q_sample,
    training_target,
    v_from_eps_x0,
    x0_from_eps,
    x0_from_v,
)
from .errors import UserError
from .interop import export_diffusers, import_diffusers
from .likelihood import VariationalBound, bits_per_dim
from .losses import Objective
from .sampling import SAMPLERS, sample, sampler_options
from .schedule import DEFAULT_SPACING, Schedule, spaced_timesteps
from .tutorial import Diffusion
from .unet import PRESETS, UNet, UNetConfig
from .version import __version__ as __version__

__all__ = [
    "DEFAULT_SPACING",
    "PRESETS",
    "SAMPLERS",
    "Diffusion",
    "ImageDataset",
    "Objective",
    "Schedule",
    "Stage",
    "UNet",
    "UNetConfig",
    "UserError",
    "VariationalBound",
    "bits_per_dim",
    "cascade",
    "load_checkpoint",
    "load_dataset",
    "load_model",
    "open_prepared",
    "prepare_dataset",
    "eps_from_v",
    "export_diffusers",
    "import_diffusers",
    "eps_from_x0",
    "image_generators",
    "prediction_to_x0_eps",
    "q_posterior",
    "q_sample",
    "sample",
    "sampler_options",
    "spaced_timesteps",
    "training_target",
    "v_from_eps_x0",
    "x0_from_eps",
    "x0_from_v",
]
