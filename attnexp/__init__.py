"""attnexp: an experiment runner for attention research on compact vision transformers.

Heavy imports (torch, Lightning) happen only when a function below is called,
so `attnexp --help` and config errors stay instant.
"""

__version__ = "0.1.0"


def build_model(overrides=None, compile=False):
    from attnexp.api import build_model as _build_model

    return _build_model(overrides, compile=compile)


def load_run(run_dir, checkpoint="best"):
    from attnexp.api import load_run as _load_run

    return _load_run(run_dir, checkpoint)


__all__ = ["build_model", "load_run", "__version__"]
