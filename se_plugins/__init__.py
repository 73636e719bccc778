"""se_plugins: Squeeze-and-Excitation as a plug-in for timm, torchvision detection and segmentation-models-pytorch.

Importing the package registers ``se_plugin_<arch>`` models with timm.
"""

from . import versions  # noqa: F401  (first: checks the libraries' versions, before an adapter fails on an old one)

# isort: split
from . import models  # noqa: F401  (registers the se_plugin_* models with timm)
from .errors import CheckpointError, ConfigError, DataError, SEPluginsError
from .insert import (
    SE_POSITIONS,
    SEOutputBlock,
    SEResidualBlock,
    SESlotBlock,
    add_se,
    has_se,
    register_se_block,
    se_modules,
    set_se_fused,
)
from .layers import SE_INITS, SqueezeExcite

try:  # the one source of the version: pyproject.toml, read back from the installed package's metadata
    from importlib.metadata import version as _metadata_version

    __version__ = _metadata_version("se-plugins")
except ImportError:  # PackageNotFoundError: a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "SE_INITS",
    "SE_POSITIONS",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "SEPluginsError",
    "SEOutputBlock",
    "SEResidualBlock",
    "SESlotBlock",
    "SqueezeExcite",
    "add_se",
    "has_se",
    "register_se_block",
    "se_modules",
    "set_se_fused",
]
