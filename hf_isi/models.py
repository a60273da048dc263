"""The model adapter: wraps an unmodified Hugging Face vision transformer and captures one batch of layer states.

Nothing here names a model family. Modules are found the way transformers 5 itself records outputs
(``_can_record_outputs``) and by walking the module tree:

* ``z0`` (pre-PE patch embeddings): a forward hook on ``get_input_embeddings()``;
* per layer, the residual stream entering the attention branch and right after it: forward pre-hooks on the
  first and second norm of the layer's last pre-norm block (``x`` and ``x + a``);
* the token layout: prefix tokens = tokens of ``hidden_states[0]`` minus patches;
* absolute position embeddings: the ``position`` parameter of the module that owns the patch embedder.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .states import LayerStates, TokenLayout, all_finite

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class ModelError(ValueError):
    """A model that cannot be analysed (not found, not a vision transformer, no attentions...)."""


class ActivationError(ValueError):
    """Activations that cannot be analysed (NaN or inf)."""


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("LayerNorm", "RMSNorm"))


def _recorded_class(model: nn.Module, key: str) -> type | None:
    """The module class transformers 5 records ``key`` ("hidden_states", "attentions") from, if declared."""
    for m in model.modules():
        spec = (getattr(type(m), "_can_record_outputs", None) or {}).get(key)
        if spec is not None:
            return getattr(spec, "target_class", spec)
    return None


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(set(DTYPES))}")
    return DTYPES[dtype]


class ModelAdapter:
    """Captures :class:`~hf_isi.states.LayerStates` from any HF vision transformer (ViT, DeiT, BEiT, DINOv2 with
    or without registers, CLIP vision, Swin) without re-implementing it.

    Args:
        model: a loaded ``PreTrainedModel`` (a classification model, a base model or a full CLIP model).
        attentions: capture attention probabilities and the attention branch (switches to eager attention,
            since fused attention never materialises the probabilities).
        name: the name results are reported under (default: the checkpoint's ``name_or_path``).
        image_processor: the processor turning images into ``pixel_values`` (default: loaded with the model).
    """

    def __init__(self, model: nn.Module, *, attentions: bool = True, name: str | None = None,
                 image_processor: Any = None) -> None:
        if getattr(model, "main_input_name", "pixel_values") != "pixel_values":
            raise ModelError(
                f"{type(model).__name__} takes '{model.main_input_name}', not images: hf_isi analyses vision "
                "transformers (ViT, DeiT, BEiT, DINOv2, CLIP vision, Swin)"
            )
        self.model = model.eval()
        self.tower = self._vision_tower(model)
        self.name = name or getattr(model.config, "name_or_path", None) or type(model).__name__
        self.attentions = attentions
        if attentions and getattr(self.tower.config, "_attn_implementation", "eager") != "eager":
            # sdpa/flash return no probabilities (transformers 5 answers attentions=() with only a warning)
            self.model.set_attn_implementation("eager")
        try:
            self.embedder = self.tower.get_input_embeddings()
        except (NotImplementedError, AttributeError) as err:
            raise ModelError(f"{type(model).__name__} has no patch embedding layer: it is not a vision transformer") from err
        if self.embedder is None:
            raise ModelError(f"{type(model).__name__} has no patch embedding layer: it is not a vision transformer")
        self.layer_modules = self._layer_modules()
        self.final_norm = next((m for m in reversed(list(self.tower.children())) if _is_norm(m)), None)
        self.image_processor = image_processor
        self.layout: TokenLayout | None = None

    # -- loading -----------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        revision: str | None = None,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device | None = None,
        attentions: bool = True,
        name: str | None = None,
    ) -> ModelAdapter:
        """Load a checkpoint (a local folder, a Hub id, or a built-in reference model name) with its processor.

        ``trust_remote_code=False`` on every load: only architectures that ship with transformers are loaded, and
        a checkpoint's own Python code (``auto_map``) is never run, nor asked about.
        """
        from safetensors import SafetensorError
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

        from . import zoo

        source = str(name_or_path)
        if source in zoo.list_reference_models():
            try:
                source = str(zoo.trained_reference_path(source))
            except FileNotFoundError as err:
                raise ModelError(str(err)) from None
        kwargs: dict[str, Any] = {"revision": revision, "dtype": resolve_dtype(dtype), "trust_remote_code": False}
        if attentions:
            kwargs["attn_implementation"] = "eager"
        try:
            config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=False)
        except (OSError, ValueError) as err:
            raise ModelError(_load_error(source, err)) from err
        try:
            if getattr(config, "vision_config", None) is not None:  # e.g. a full CLIP checkpoint: its vision tower
                model_cls = AutoModel._model_mapping[type(config.vision_config)]
                model = model_cls.from_pretrained(source, **kwargs)
            elif any(a.endswith("ForImageClassification") for a in (config.architectures or [])):
                model = AutoModelForImageClassification.from_pretrained(source, **kwargs)
            else:
                model = AutoModel.from_pretrained(source, **kwargs)
        except (OSError, ValueError, KeyError, SafetensorError) as err:
            raise ModelError(_load_error(source, err)) from err
        try:
            processor = AutoImageProcessor.from_pretrained(source, revision=revision, trust_remote_code=False)
        except (OSError, ValueError, KeyError):
            processor = None
        if device is not None:
            model = model.to(device)
        return cls(model, attentions=attentions, name=name or str(name_or_path), image_processor=processor)

    @staticmethod
    def _vision_tower(model: nn.Module) -> nn.Module:
        base = getattr(model, "base_model", model)
        tower = getattr(base, "vision_model", None)
        return tower if isinstance(tower, nn.Module) and not hasattr(base, "embeddings") else base

    def _layer_modules(self) -> list[nn.Module]:
        cls = _recorded_class(self.tower, "hidden_states")
        if cls is not None:
            return [m for m in self.tower.modules() if isinstance(m, cls)]
        # Fallback: the longest ModuleList of blocks.
        lists = [m for m in self.tower.modules() if isinstance(m, nn.ModuleList)]
        return list(max(lists, key=len)) if lists else []

    # -- properties --------------------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.tower.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def image_size(self) -> tuple[int, int]:
        return _pair(getattr(self.config, "image_size", 224))

    @property
    def patch_size(self) -> tuple[int, int]:
        return _pair(getattr(self.config, "patch_size", 16))

    def position_embeddings(self) -> nn.Parameter | None:
        """The absolute position-embedding parameter added to the patch tokens, or ``None`` (relative-only
        models such as BEiT's default, Swin without absolute embeddings)."""
        owner = next((m for m in self.tower.modules() if any(c is self.embedder for c in m.children())), None)
        if owner is None:
            return None
        skip = {id(p) for p in self.embedder.parameters()}
        for pname, p in owner.named_parameters():
            if "position" in pname and "relative" not in pname and id(p) not in skip and p is not None:
                return p
        return None

    @contextlib.contextmanager
    def scaled_position_embeddings(self, factor: float) -> Iterator[None]:
        """Temporarily multiply the absolute position embeddings by ``factor`` (the PE-scaling experiment)."""
        p = self.position_embeddings()
        if p is None:
            raise ModelError(f"{self.name} has no absolute position embeddings to scale")
        saved = p.data.clone()
        p.data.mul_(factor)
        try:
            yield
        finally:
            p.data.copy_(saved)

    def provenance(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "model": self.name,
            "model_class": type(self.model).__name__,
            "model_type": getattr(cfg, "model_type", None),
            "revision": getattr(cfg, "_commit_hash", None),
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "dtype": str(self.dtype).replace("torch.", ""),
            "attn_implementation": getattr(self.config, "_attn_implementation", None),
        }

    # -- capture -----------------------------------------------------------------------------------------
    def _attention_norms(self, layer: nn.Module) -> tuple[nn.Module, nn.Module] | None:
        """The (pre-attention, pre-MLP) norms of the layer's last pre-norm block: their inputs are ``x`` and
        ``x + a``. ``None`` if the layer is not a pre-norm block."""
        for block in reversed(list(layer.modules())):
            norms = [c for c in block.children() if _is_norm(c)]
            if len(norms) == 2:
                return norms[0], norms[1]
        return None

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            shape = tuple(pixel_values.shape) if hasattr(pixel_values, "shape") else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be a [batch, channels, height, width] tensor, got {shape}")
        channels = getattr(self.config, "num_channels", 3)
        if pixel_values.shape[1] != channels:
            raise ValueError(f"pixel_values have {pixel_values.shape[1]} channels but {self.name} expects {channels}")
        if tuple(pixel_values.shape[-2:]) != self.image_size:
            raise ValueError(
                f"pixel_values are {tuple(pixel_values.shape[-2:])} pixels but {self.name} expects {self.image_size}; "
                "pass images (hf_isi resizes them with the model's image processor) or resize first"
            )

    @torch.inference_mode()
    def capture(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                keys: torch.Tensor | None = None) -> LayerStates:
        """Run one forward pass and return the batch's layer states."""
        self.check_pixel_values(pixel_values)
        pixel_values = pixel_values.to(self.device, self.dtype)
        store: dict[str, Any] = {}
        handles = [self.embedder.register_forward_hook(lambda m, a, out: store.__setitem__("z0", out))]
        norm_pairs = [self._attention_norms(layer) for layer in self.layer_modules] if self.attentions else []
        if norm_pairs and all(p is not None for p in norm_pairs):
            for i, (before, after) in enumerate(norm_pairs):
                handles.append(before.register_forward_pre_hook(lambda m, a, i=i: store.__setitem__(("x", i), a[0])))
                handles.append(after.register_forward_pre_hook(lambda m, a, i=i: store.__setitem__(("xa", i), a[0])))
        try:
            out = self.tower(pixel_values=pixel_values, output_hidden_states=True, output_attentions=self.attentions)
        finally:
            for h in handles:
                h.remove()

        z0 = store["z0"]
        z0 = z0[0] if isinstance(z0, tuple) else z0
        if z0.ndim == 4:  # a plain Conv2d patch embedder (CLIP): [B, D, h, w] -> [B, h w, D]
            z0 = z0.flatten(2).transpose(1, 2)
        hidden = tuple(out.hidden_states or ())
        if not hidden or hidden[0].ndim != 3:
            raise ModelError(
                f"{type(self.model).__name__} does not return token sequences as hidden states: it is not a vision "
                "transformer"
            )
        for i, h in enumerate((z0, *hidden)):
            if not all_finite(h):
                raise ActivationError(
                    f"{self.name}: {'pre-PE embeddings' if i == 0 else f'layer {i - 1}'} contain NaN or inf; "
                    "check the inputs, or run in float32 instead of float16"
                )
        num_layers = len(hidden) - 1
        attentions = residuals = None
        if self.attentions:
            attentions = tuple(a for a in (out.attentions or ()) if a is not None)
            if len(attentions) != num_layers:
                raise ModelError(
                    f"{self.name} returned {len(attentions)} attention maps for {num_layers} layers: attention "
                    "probabilities are unavailable (fused sdpa/flash attention?); load it with "
                    "attn_implementation='eager' or leave the attention metrics out"
                )
            if len(norm_pairs) == num_layers and all(p is not None for p in norm_pairs):
                residuals = tuple((store[("x", i)], store[("xa", i)]) for i in range(num_layers))
        layout = self._layout(pixel_values, z0, hidden[0])
        return LayerStates(
            patch_embeddings=z0,
            hidden_states=hidden,
            layout=layout,
            attentions=attentions,
            attention_residuals=residuals,
            labels=labels,
            keys=keys,
            final_norm=self.final_norm,
            position_embeddings=self._patch_position_embeddings(z0.shape[1]),
        )

    def _layout(self, pixel_values: torch.Tensor, z0: torch.Tensor, embedded: torch.Tensor) -> TokenLayout:
        n = z0.shape[1]
        prefix = embedded.shape[1] - n
        if prefix < 0:
            raise ModelError(f"{self.name}: fewer embedding tokens ({embedded.shape[1]}) than patches ({n})")
        ph, pw = self.patch_size
        grid = (pixel_values.shape[-2] // ph, pixel_values.shape[-1] // pw)
        if grid[0] * grid[1] != n:
            side = int(round(n**0.5))
            grid = (side, n // side)
        self.layout = TokenLayout(prefix, 0 if prefix > 0 else None, grid, (ph, pw))
        return self.layout

    def _patch_position_embeddings(self, num_patches: int) -> torch.Tensor | None:
        p = self.position_embeddings()
        if p is None:
            return None
        rows = p.detach().reshape(-1, p.shape[-1])
        return rows[-num_patches:] if rows.shape[0] >= num_patches else rows

    @property
    def num_layers(self) -> int:
        return len(self.layer_modules)


def _load_error(source: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "trust_remote_code" in str(err) or "contains custom code" in str(err):
        return (f"cannot load '{source}': it needs its own Python code (auto_map), and hf_isi never runs a "
                "checkpoint's code (trust_remote_code=False); use an architecture that ships with transformers")
    if type(err).__name__ == "SafetensorError":
        return (f"cannot load '{source}': the weights file {_unreadable_weights(source)} is corrupt or truncated "
                f"({first}); download or save it again")
    if Path(source).exists():
        return f"cannot load '{source}' as a vision transformer: {first}"
    return (f"cannot load model '{source}': it is not a local folder and could not be fetched from the Hub "
            f"(offline, or no such repository) - {first}")


def _unreadable_weights(source: str) -> str:
    """The first ``*.safetensors`` file of a local checkpoint whose header cannot be read (quoted), else a
    description."""
    from safetensors import safe_open

    for file in sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []:
        try:
            with safe_open(str(file), "pt"):
                pass
        except Exception:  # noqa: BLE001 - any failure names the file
            return f"'{file}'"
    return "(a .safetensors file)"


def load_model(name_or_path: str | Path | nn.Module | ModelAdapter, **kwargs: Any) -> ModelAdapter:
    """A :class:`ModelAdapter` from a path, Hub id, built-in reference name, loaded model, or adapter."""
    if isinstance(name_or_path, ModelAdapter):
        return name_or_path
    if isinstance(name_or_path, nn.Module):
        attentions = kwargs.pop("attentions", True)
        return ModelAdapter(name_or_path, attentions=attentions, name=kwargs.pop("name", None),
                            image_processor=kwargs.pop("image_processor", None))
    return ModelAdapter.from_pretrained(name_or_path, **kwargs)
