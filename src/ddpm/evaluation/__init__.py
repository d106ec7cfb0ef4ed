"""The evaluation wing: ``ddpm eval`` and the measures behind it.

- :mod:`.evaluate`: ``evaluate_images`` and ``EvalSettings``, the command's work and its settings;
- :mod:`.samples`: reading the images to score (a folder of PNGs with their provenance, or an ``.npz``);
- :mod:`.metrics`: Fréchet distance, KID, precision/recall, nearest neighbours and memorization;
- :mod:`.inception`: Inception-v3 with the TF FID weights;
- :mod:`.featurenet`: the small per-data-set classifier behind the quick FD;
- :mod:`.reference`: cached reference features.

Nothing here imports training or the command line.
"""
