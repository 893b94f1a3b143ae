"""sentilora: LoRA fine-tuning of transformer encoders for text classification."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Classifier", "Config", "train", "__version__"]

if TYPE_CHECKING:
    from sentilora.config import Config
    from sentilora.predict import Classifier
    from sentilora.train import train


def __getattr__(name: str) -> Any:
    # Lazy, so `import sentilora` and `sentilora --help` stay fast (torch loads on first use).
    if name == "Classifier":
        from sentilora.predict import Classifier

        return Classifier
    if name == "Config":
        from sentilora.config import Config

        return Config
    if name == "train":
        from sentilora.train import train

        return train
    raise AttributeError(f"module 'sentilora' has no attribute {name!r}")
