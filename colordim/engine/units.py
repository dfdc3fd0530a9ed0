"""Which dimension of a layer's output holds its units, the features it computes: what a dead unit is one of.

A convolution's (batch, channels, height, width) output has its units in dim 1; a Linear's, an attention's
or an embedding's (batch, tokens, features) output has them last. An elementwise module (a ReLU, a
dropout) has the units of what feeds it. Guessed from the model's structure, in `named_modules()` order
(the order modules are defined in, which is almost always the order they run in):

- a module of a known kind says it itself (`CHANNELS_FIRST`, `FEATURES_LAST`; torchvision's `Permute`, by
  where it moves dim 1 or the last dim: ConvNeXt's and Swin's blocks switch layouts with it);
- a container (a block, an MLP) has the units of the last known module inside it, which makes its output;
- any other module (a ReLU, GELU, dropout, a custom leaf) has those of the nearest known module before it;
- with nothing known: dim 1, channels.

`units=` on `record()` and `ActivationHistogram` overrides the guess: "channels" or "features" for every
layer, or {layer name or pattern: "channels" | "features"} for some. Outputs of one or two dims have their
units in dim 1 either way.
"""
from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

from ..data.options import CHANNELS, FEATURES, check_rule, check_units  # the names units take, and their checks

__all__ = ["CHANNELS", "FEATURES", "own_units", "guess_units", "resolve_units"]


_pool = nn.modules.pooling
CHANNELS_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
                  nn.GroupNorm, nn.LocalResponseNorm, _pool._MaxPoolNd, _pool._AvgPoolNd, _pool._AdaptiveAvgPoolNd,
                  _pool._AdaptiveMaxPoolNd, _pool._LPPoolNd, nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle,
                  nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
FEATURES_LAST = tuple(kind for kind in (
    nn.Linear, nn.Bilinear, nn.Embedding, nn.EmbeddingBag, nn.LayerNorm, getattr(nn, "RMSNorm", None),
    nn.MultiheadAttention, nn.RNNBase, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
    nn.TransformerEncoder, nn.TransformerDecoder, nn.Transformer) if kind is not None)
# Hugging Face's own layers, by class name (no import of transformers): GPT-2's Conv1D is a Linear, and
# every model's norms and embeddings work on the last dim.
_FEATURES_NAMES = ("Conv1D",)
_FEATURES_SUFFIXES = ("LayerNorm", "RMSNorm", "Embedding", "Embeddings")


def own_units(module: nn.Module):
    "CHANNELS or FEATURES for a module of a known kind, else None."
    name = type(module).__name__
    if isinstance(module, CHANNELS_FIRST) or name.endswith(("2d", "3d")):  # torchvision's and timm's LayerNorm2d too
        return CHANNELS
    dims = getattr(module, "dims", None)
    if name == "Permute" and isinstance(dims, (list, tuple)) and len(dims) >= 3:  # torchvision's (ConvNeXt, Swin)
        return CHANNELS if dims[1] == len(dims) - 1 else FEATURES if dims[-1] == 1 else None
    if isinstance(module, FEATURES_LAST) or name in _FEATURES_NAMES or name.endswith(_FEATURES_SUFFIXES):
        return FEATURES
    return None


def guess_units(model, names: dict) -> dict:
    """{layer name: CHANNELS or FEATURES} for the layers `names` ({layer name: module}, as `find_layers`
    gives: the root may be named "model") of `model`, guessed from its structure (without a model, from
    the layers alone, in their order)."""
    order = list(model.named_modules()) if model is not None else list(names.items())
    own = [own_units(module) for _, module in order]
    position = {id(module): index for index, (_, module) in enumerate(order)}
    guessed = {}
    for layer, module in names.items():
        index = position.get(id(module))
        guessed[layer] = CHANNELS if index is None else _guess(order, own, index)
    return guessed


def _guess(order: list, own: list, index: int) -> str:
    if own[index] is not None:
        return own[index]
    prefix = order[index][0] + "." if order[index][0] else ""
    inside = [rule for (name, _), rule in zip(order[index + 1:], own[index + 1:])
              if rule is not None and name.startswith(prefix)]
    if inside:  # a container: its output comes from its last layers
        return inside[-1]
    before = [rule for rule in own[:index] if rule is not None]
    return before[-1] if before else CHANNELS


def resolve_units(model, names: dict, units=None) -> dict:
    """{layer name: CHANNELS or FEATURES}: `units` None or "auto" (guessed), one rule for all, or a dict
    {layer name or pattern: rule} for some (the others guessed); a clear error for anything else."""
    if units is None or (isinstance(units, str) and units == "auto"):
        return guess_units(model, names)
    check_units(units)
    if isinstance(units, str):
        return {layer: units for layer in names}
    resolved = guess_units(model, names)
    for spec, rule in units.items():
        matched = [layer for layer in names if isinstance(spec, str) and fnmatchcase(layer, spec)]
        if not matched:
            raise ValueError(f"units: {spec!r} names no recorded layer; recorded layers: {list(names)}")
        for layer in matched:
            resolved[layer] = check_rule(f"units[{spec!r}]", rule)
    return resolved
