"""caco-jax: MobileNetV3-CaCo skin-lesion classification in JAX/Flax NNX."""

__version__ = "0.1.0"


def _configs_from_checkout() -> None:
    """``caco_jax.configs`` is the top-level ``configs/`` folder, mapped into the package when it is installed
    (pyproject.toml); a checkout used without installing (``PYTHONPATH=.``, e.g. on a bare GPU box) gets the
    same mapping here."""
    import importlib.util
    import pathlib
    import sys

    if "caco_jax.configs" in sys.modules:
        return
    folder = pathlib.Path(__file__).resolve().parent.parent / "configs"
    if (pathlib.Path(__file__).resolve().parent / "configs").exists() or not (folder / "__init__.py").is_file():
        return
    try:
        if importlib.util.find_spec("caco_jax.configs") is not None:
            return  # installed (editable or not): the installed mapping wins
    except ModuleNotFoundError:
        pass
    spec = importlib.util.spec_from_file_location(
        "caco_jax.configs", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules["caco_jax.configs"] = module
        spec.loader.exec_module(module)


_configs_from_checkout()
