"""sentilora: LoRA fine-tuning of transformer encoders for text classification."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any


def _version() -> str:
    try:
        return version("sentilora")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


__version__ = _version()
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
    if name == "train":  # the module, which calls as its train() (sentilora.train._CallableModule)
        import importlib

        return importlib.import_module("sentilora.train")
    raise AttributeError(f"module 'sentilora' has no attribute {name!r}")
