"""The interop wing: the diffusers format, in and out (``ddpm convert SRC DST``).

- :mod:`.configs`: network and scheduler configurations;
- :mod:`.weights`: the state dicts, name by name;
- :mod:`.convert`: diffusers folders read and written, :func:`import_diffusers` and :func:`export_diffusers`.


**Import.** A diffusers ``UNet2DModel`` (``config.json`` + ``diffusion_pytorch_model.safetensors``, or a
``.bin`` read with ``torch.load(weights_only=True)``) with its ``DDPMScheduler`` (``scheduler_config.json``),
either at the root of a folder (as ``google/ddpm-cifar10-32`` has them) or as a pipeline folder with ``unet/``
and ``scheduler/``, becomes an ordinary ddpm checkpoint (step 0, EMA weights = raw weights) that ``ddpm sample``,
``ddpm edit``, ``ddpm eval`` and ``ddpm train --init-from`` use like any other.

**Export.** A ddpm checkpoint (its EMA weights unless told otherwise) becomes a pipeline folder: ``model_index.json``,
``unet/`` and ``scheduler/``, which ``diffusers.DDPMPipeline.from_pretrained(DST)`` and
``UNet2DModel.from_pretrained(DST, subfolder="unet")`` load. Nothing here imports diffusers.

The two networks are the same up to names, with three correspondences:

- time embedding: ours is ``[sin, cos]`` with frequencies exp(−ln(10⁴)·i/(h−1)), i.e. diffusers'
  ``flip_sin_to_cos=False, freq_shift=1``;
- attention: our 1×1 ``qkv`` conv is diffusers' ``to_q``/``to_k``/``to_v`` linears stacked (2022-era names
  ``query``/``key``/``value``/``proj_attn`` are read too);
- downsampling: diffusers' ``downsample_padding=0`` (TensorFlow's "SAME", the DDPM authors' choice) is
  ``UNetConfig.downsample_padding="same"``; ``downsample_padding=1`` is our ``"symmetric"``.

Whatever has no counterpart (other embeddings, activations, norm eps, block types, class embeddings, ...) is
refused with one line that names the field.

Scheduler ↔ checkpoint: ``linear`` ↔ ``Schedule.linear``, ``squaredcos_cap_v2`` ↔ ``Schedule.cosine`` (s = 0.008,
max β 0.999), other tables ↔ ``trained_betas``; ``epsilon``/``sample``/``v_prediction`` ↔ ``eps``/``x0``/``v``.
The sampling settings (``variance_type``, ``clip_sample``) are what ``ddpm sample`` flags choose:
``fixed_small`` is ``--option variance=posterior`` (the default), ``fixed_large`` (the DDPM paper's CIFAR-10
choice) is ``--option variance=beta``, ``clip_sample=false`` is ``--no-clip``; see :func:`pipeline_flags`.

Learned variances: diffusers' ``learned_range`` is ddpm's ``learned-range`` (improved DDPM eq. 15: the network's
second C output channels v give log σ² = frac·log β_t + (1 − frac)·log β̃_t, frac = (v + 1)/2), both ways: a
UNet2DModel with ``out_channels = 2 × in_channels`` and that scheduler imports as a checkpoint whose variance is
``learned-range`` (``UNetConfig.out_channels = 2C``), and such a checkpoint exports as one. diffusers' ``learned``
reads the second half as σ² itself, ddpm's ``learned`` as log σ²: neither is converted into the other.
"""

from .convert import export_diffusers, import_diffusers

__all__ = ["export_diffusers", "import_diffusers"]
