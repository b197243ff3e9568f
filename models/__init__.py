"""What a CLIP model is: configs, the one factory over open_clip, preprocessing, the tokenizer, training, evaluation.

Importing this package (and models.preprocess, models.tokenizer, models.prompts) loads neither torch nor open_clip:
the server imports them to feed an export. models.factory, training and evaluation need the `torch` extra.
"""

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
DEFAULT_MODEL = str(CHECKPOINT_DIR / "shapes-rn-s")  # the bundled model, served when CLIP_MODEL is not set
