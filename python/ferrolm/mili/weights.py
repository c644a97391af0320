"""``WeightLoader``: MILI's view of a checkpoint's tensors, read by the Rust core.

Tensors come back as numpy arrays (there is no torch here). Safetensors
float32 and float16 tensors are read-only views of the memory-mapped file
(no copy); bfloat16 and GGUF tensors are converted to float32 by the core's
readers. ``quantize_to_fp8`` uses the core's FP8 E4M3 quantizer, the same
one ``Qwen3Model`` then loads the weights with.

>>> loader = WeightLoader("path/to/model", Qwen3Config.from_pretrained("path/to/model"))  # doctest: +SKIP
>>> weights = loader.load_from_safetensors()                                  # doctest: +SKIP
>>> loader.get_weight_as_numpy("model.norm.weight").shape                     # doctest: +SKIP
(1024,)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from ferrolm import _core, hub
from ferrolm._device import core_device
from ferrolm._validate import of_type
from ferrolm.kv import dtype_name
from ferrolm.mili.config import Qwen3Config

# Config fields that decide tensor shapes: a loader's config must agree with
# the checkpoint's on each of them.
_SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "vocab_size")


@dataclass(frozen=True)
class Fp8Weight:
    """A matrix in FP8 E4M3 (``codes``, one byte per weight) with one float32
    scale per run of ``group_size`` values of a row (the layout models use):
    ``w[i, j] = e4m3(codes[i, j]) * scales[i, j // group_size]``.
    ``np.asarray`` gives the dequantized float32 matrix."""

    codes: np.ndarray
    scales: np.ndarray
    group_size: int = _core.FP8_GROUP_SIZE

    @property
    def shape(self) -> tuple[int, ...]:
        return self.codes.shape

    def dequantize(self) -> np.ndarray:
        return _core.dequantize_fp8(self.codes, self.scales, group_size=self.group_size)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        w = self.dequantize()
        return w if dtype is None else w.astype(dtype)


Weight = Union[np.ndarray, Fp8Weight]


class WeightLoader:
    """Loads and hands out a model's weights (MILI's ``WeightLoader``).

    Args:
        model_path: a model directory (``config.json`` + safetensors), a
            ``.gguf`` file or a short name such as ``"smollm2"``.
        config: the model's ``Qwen3Config``; it must agree with the
            checkpoint's own config on every shape (``ValueError`` otherwise).
        device: where ``Qwen3Model`` runs these weights: ``"cpu"``,
            ``"cuda"``, ``"cuda:N"`` or a GPU index.
        dtype: ``"float32"`` (default, as MILI's) runs the exact path;
            ``None`` keeps weights as stored (quantized or half) on the CPU;
            ``"bfloat16"`` on a GPU.
    """

    def __init__(self, model_path: str | os.PathLike[str], config: Qwen3Config, device: str | int = "cpu",
                 dtype: Any = "float32") -> None:
        of_type(config, "config", Qwen3Config, "a Qwen3Config")
        self.model_path = Path(os.fspath(model_path))
        self.config = config
        self.device = core_device(device)
        self.dtype = _dtype_name(dtype)
        self.quantize: str | None = config.quantize
        self.weights: dict[str, Weight] = {}

    def load_from_safetensors(self) -> dict[str, Weight]:
        """Every tensor of ``model_path``'s safetensors files (single or sharded).

        ``FileNotFoundError`` if the directory has none.
        """
        path = hub.resolve(self.model_path)
        if not path.is_dir():
            raise FileNotFoundError(f"Safetensors file not found: {path} is not a model directory "
                                    "(for a .gguf file use load_from_huggingface)")
        return self._load(path)

    def load_from_huggingface(self, model_name: str | os.PathLike[str]) -> dict[str, Weight]:
        """Loads ``model_name``, resolved as every ferrolm entry point does (a
        local directory, a ``.gguf`` file or a short name); it becomes this
        loader's ``model_path``. There is no model hub here: hub ids such as
        ``"Qwen/Qwen3-0.6B"`` raise ``FileNotFoundError`` saying so."""
        path = hub.resolve(model_name)
        self.model_path = path
        return self._load(path)

    def quantize_to_fp8(self) -> dict[str, Weight]:
        """Quantizes the decoder layers' linear projections (q/k/v/o,
        gate/up/down) to FP8 E4M3 with a scale per 32 values of a row, exactly as
        ``quantize="fp8"`` does at load, and makes ``Qwen3Model`` load this
        checkpoint that way. Embeddings, the LM head and norms stay as they are."""
        if not self.weights:
            raise RuntimeError("no weights loaded: call load_from_safetensors() or load_from_huggingface() first")
        for name, w in self.weights.items():
            if isinstance(w, np.ndarray) and _core.is_layer_linear(name):
                codes, scales = _core.quantize_fp8(np.ascontiguousarray(w, dtype=np.float32),
                                                   group_size=_core.FP8_GROUP_SIZE)
                self.weights[name] = Fp8Weight(codes, scales)
        self.quantize = "fp8"
        return self.weights

    def get_weight(self, name: str) -> Weight:
        """One tensor by its HF name (``KeyError`` if absent)."""
        if name not in self.weights:
            hint = "" if self.weights else " (no weights loaded yet: call load_from_safetensors() first)"
            raise KeyError(f"Weight {name} not found{hint}")
        return self.weights[name]

    def get_weight_as_numpy(self, name: str) -> np.ndarray:
        """One tensor as a numpy array (an FP8 matrix dequantized to float32)."""
        return np.asarray(self.get_weight(name))

    def _load(self, path: Path) -> dict[str, Weight]:
        check_config(self.config, path)
        checkpoint = _core.Checkpoint.open(str(path))
        self.weights = {name: checkpoint.tensor(name) for name in checkpoint.names()}
        return self.weights


def check_config(config: Qwen3Config, path: os.PathLike[str]) -> None:
    """Raises ValueError naming the first shape field where ``config`` and the
    checkpoint at ``path`` disagree."""
    stored = _core.config_from_pretrained(os.fspath(path))
    for field in _SHAPE_FIELDS:
        if getattr(config, field) != stored[field]:
            raise ValueError(f"config field `{field}` is {getattr(config, field)} but the checkpoint at "
                             f"{path} has {stored[field]}; use Qwen3Config.from_pretrained({str(path)!r})")


def _dtype_name(dtype: Any) -> str | None:
    """A dtype given as a string, a numpy or torch dtype, or None, as the core's name."""
    if dtype is None:
        return None
    name = dtype_name(dtype).lower()
    if name not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be 'float32', 'float16', 'bfloat16' or None, got {dtype!r}")
    return name
