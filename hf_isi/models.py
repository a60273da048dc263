"""The model adapter: wraps an unmodified Hugging Face vision transformer and captures one batch of layer states.

Nothing here names a model family. The model's anatomy is resolved once, when the adapter is built, the way
transformers 5 itself records outputs (``_can_record_outputs``) and by walking the module tree, unless
:class:`ModuleNames` names the modules:

* ``z0`` (pre-PE patch embeddings): a forward hook on ``get_input_embeddings()``;
* per layer, the residual stream entering the attention branch and right after it: forward pre-hooks on the
  first and second norm of the layer's last pre-norm block (``x`` and ``x + a``);
* the token layout: prefix tokens = tokens of ``hidden_states[0]`` minus patches;
* absolute position embeddings: the ``position`` parameter of the module that owns the patch embedder.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, cast

import torch
from torch import nn

from .states import LayerStates, TokenLayout, all_finite, layer_states_from_outputs, patch_token_sequence
from .utils import DTYPES, resolve_dtype

logger = logging.getLogger(__name__)

__all__ = ["DTYPES", "ActivationError", "ModelAdapter", "ModelError", "ModuleNames", "load_model", "resolve_dtype"]


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


def _attention_norms(layer: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """The (pre-attention, pre-MLP) norms of the layer's last pre-norm block: their inputs are ``x`` and
    ``x + a``. ``None`` if the layer is not a pre-norm block."""
    for block in reversed(list(layer.modules())):
        norms = [c for c in block.children() if _is_norm(c)]
        if len(norms) == 2:
            return norms[0], norms[1]
    return None


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


@dataclass(frozen=True)
class ModuleNames:
    """Where the parts hf_isi hooks live, for models the automatic search gets wrong (in the spirit of the module
    names of timm's ``AttentionExtract``). Dotted names relative to the vision tower (``ModelAdapter.tower``);
    ``None`` finds the part automatically, ``""`` says the model has none (final norm, position embeddings).

    Attributes:
        embedder: the patch embedder, whose output is ``z0``.
        layers: the ``ModuleList`` of blocks (one per entry of ``hidden_states[1:]``).
        attention_norms: inside each block, the two norms whose inputs are ``x`` (before the attention branch)
            and ``x + a`` (after it).
        final_norm: the norm after the last block (for probes on normalised features).
        position_embeddings: the absolute position-embedding parameter.

    Example:
        >>> names = ModuleNames(layers="encoder.layer", attention_norms=("layernorm_before", "layernorm_after"))
        >>> adapter = ModelAdapter(model, names=names)                          # doctest: +SKIP
    """

    embedder: str | None = None
    layers: str | None = None
    attention_norms: tuple[str, str] | None = None
    final_norm: str | None = None
    position_embeddings: str | None = None


class ModelAdapter:
    """Captures :class:`~hf_isi.states.LayerStates` from any HF vision transformer (ViT, DeiT, BEiT, DINOv2 with
    or without registers, CLIP vision, Swin) without re-implementing it.

    Args:
        model: a loaded ``PreTrainedModel`` (a classification model, a base model or a full CLIP model).
        attentions: capture attention probabilities and the attention branch (switches to eager attention,
            since fused attention never materialises the probabilities).
        name: the name results are reported under (default: the checkpoint's ``name_or_path``).
        image_processor: the processor turning images into ``pixel_values`` (default: loaded with the model).
        names: where the hooked modules are, for unusual models (default: found automatically).
    """

    def __init__(self, model: nn.Module, *, attentions: bool = True, name: str | None = None,
                 image_processor: Any = None, names: ModuleNames | None = None) -> None:
        if getattr(model, "main_input_name", "pixel_values") != "pixel_values":
            raise ModelError(
                f"{type(model).__name__} takes '{model.main_input_name}', not images: hf_isi analyses vision "
                "transformers (ViT, DeiT, BEiT, DINOv2, CLIP vision, Swin)"
            )
        # a transformers PreTrainedModel in practice (duck-typed: set_attn_implementation, get_input_embeddings)
        self.model: Any = cast(Any, model.eval())
        self.tower: Any = cast(Any, self._vision_tower(model))
        self.name = name or getattr(model.config, "name_or_path", None) or type(model).__name__
        self.attentions = attentions
        if attentions and getattr(self.tower.config, "_attn_implementation", "eager") != "eager":
            # sdpa/flash return no probabilities (transformers 5 answers attentions=() with only a warning)
            self.model.set_attn_implementation("eager")
        self.image_processor = image_processor
        self.layout: TokenLayout | None = None
        # the anatomy, resolved once (capture() only registers hooks on these)
        self.names = names or ModuleNames()
        self.embedder = self._embedder()
        self.layer_modules = self._layer_modules()
        #: per block, the norms whose inputs are ``x`` and ``x + a``; ``None`` unless every block has them
        self.norm_pairs = self._norm_pairs()
        self.final_norm = self._final_norm()
        self.position_parameter = self._position_parameter()

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
        names: ModuleNames | None = None,
    ) -> ModelAdapter:
        """Load a checkpoint (a local folder, a Hub id, or a built-in reference model name) with its processor.

        ``trust_remote_code=False`` on every load: only architectures that ship with transformers are loaded, and
        a checkpoint's own Python code (``auto_map``) is never run, nor asked about.
        """
        from safetensors import SafetensorError
        from transformers import (
            MODEL_MAPPING,
            AutoConfig,
            AutoImageProcessor,
            AutoModel,
            AutoModelForImageClassification,
        )

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
                model_cls: Any = MODEL_MAPPING[type(config.vision_config)]
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
        return cls(model, attentions=attentions, name=name or str(name_or_path), image_processor=processor,
                   names=names)

    @staticmethod
    def _vision_tower(model: nn.Module) -> nn.Module:
        base = getattr(model, "base_model", model)
        tower = getattr(base, "vision_model", None)
        return tower if isinstance(tower, nn.Module) and not hasattr(base, "embeddings") else base

    # -- anatomy (resolved once, in __init__) -----------------------------------------------------------
    def _named(self, name: str, what: str) -> nn.Module:
        try:
            return self.tower.get_submodule(name)
        except AttributeError:
            raise ModelError(f"{type(self.model).__name__} has no module '{name}' (ModuleNames.{what})") from None

    def _embedder(self) -> nn.Module:
        if self.names.embedder is not None:
            return self._named(self.names.embedder, "embedder")
        not_vit = f"{type(self.model).__name__} has no patch embedding layer: it is not a vision transformer"
        try:
            embedder = self.tower.get_input_embeddings()
        except (NotImplementedError, AttributeError) as err:
            raise ModelError(not_vit) from err
        if embedder is None:
            raise ModelError(not_vit)
        return embedder

    def _layer_modules(self) -> list[nn.Module]:
        if self.names.layers is not None:
            return list(self._named(self.names.layers, "layers").children())
        modules: list[nn.Module] = list(self.tower.modules())
        cls = _recorded_class(self.tower, "hidden_states")
        if cls is not None:
            return [m for m in modules if isinstance(m, cls)]
        # Fallback: the longest ModuleList of blocks.
        lists = [list(m) for m in modules if isinstance(m, nn.ModuleList)]
        return max(lists, key=len) if lists else []

    def _norm_pairs(self) -> list[tuple[nn.Module, nn.Module]] | None:
        if self.names.attention_norms is not None:
            before, after = self.names.attention_norms
            pairs = []
            for i, layer in enumerate(self.layer_modules):
                try:
                    pairs.append((layer.get_submodule(before), layer.get_submodule(after)))
                except AttributeError:
                    raise ModelError(f"block {i} of {type(self.model).__name__} has no module '{before}' or "
                                     f"'{after}' (ModuleNames.attention_norms)") from None
            return pairs
        found = [_attention_norms(layer) for layer in self.layer_modules]
        return [p for p in found if p is not None] if found and all(p is not None for p in found) else None

    def _final_norm(self) -> nn.Module | None:
        if self.names.final_norm is not None:
            return self._named(self.names.final_norm, "final_norm") if self.names.final_norm else None
        return next((m for m in reversed(list(self.tower.children())) if _is_norm(m)), None)

    def _position_parameter(self) -> nn.Parameter | None:
        """The absolute position-embedding parameter added to the patch tokens, or ``None`` (relative-only
        models such as BEiT's default, Swin without absolute embeddings)."""
        name = self.names.position_embeddings
        if name is not None:
            if not name:
                return None
            try:
                return self.tower.get_parameter(name)
            except AttributeError:
                raise ModelError(f"{type(self.model).__name__} has no parameter '{name}' "
                                 "(ModuleNames.position_embeddings)") from None
        owner = next((m for m in self.tower.modules() if any(c is self.embedder for c in m.children())), None)
        if owner is None:
            return None
        skip = {id(p) for p in self.embedder.parameters()}
        for pname, p in owner.named_parameters():
            if "position" in pname and "relative" not in pname and id(p) not in skip and p is not None:
                return p
        return None

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
        return self.position_parameter

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
        store: dict[Any, Any] = {}
        handles = [self.embedder.register_forward_hook(lambda m, a, out: store.__setitem__("z0", out))]
        norm_pairs = self.norm_pairs if self.attentions else None
        for i, (before, after) in enumerate(norm_pairs or ()):
            handles.append(before.register_forward_pre_hook(lambda m, a, i=i: store.__setitem__(("x", i), a[0])))
            handles.append(after.register_forward_pre_hook(lambda m, a, i=i: store.__setitem__(("xa", i), a[0])))
        try:
            out = self.tower(pixel_values=pixel_values, output_hidden_states=True, output_attentions=self.attentions)
        finally:
            for h in handles:
                h.remove()

        z0 = store["z0"]
        z0, _ = patch_token_sequence(z0[0] if isinstance(z0, tuple) else z0)
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
            if norm_pairs is not None and len(norm_pairs) == num_layers:
                residuals = tuple((store[("x", i)], store[("xa", i)]) for i in range(num_layers))
        n = z0.shape[1]
        if hidden[0].shape[1] < n:
            raise ModelError(f"{self.name}: fewer embedding tokens ({hidden[0].shape[1]}) than patches ({n})")
        ph, pw = self.patch_size
        grid = (pixel_values.shape[-2] // ph, pixel_values.shape[-1] // pw)
        states = layer_states_from_outputs(
            z0, hidden, patch_grid=grid if grid[0] * grid[1] == n else None, patch_size=(ph, pw),
            attentions=attentions, attention_residuals=residuals, labels=labels, keys=keys,
            position_embeddings=self.position_parameter, final_norm=self.final_norm,
        )
        self.layout = states.layout
        return states

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


def load_model(
    name_or_path: str | Path | nn.Module | ModelAdapter,
    *,
    attentions: bool | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    revision: str | None = None,
    name: str | None = None,
    image_processor: Any = None,
    names: ModuleNames | None = None,
) -> ModelAdapter:
    """A :class:`ModelAdapter` from a path, Hub id, built-in reference name, loaded model, or adapter.

    ``dtype`` and ``device`` apply to every kind of input (a loaded model or an adapter's model is converted in
    place); ``dtype`` defaults to float32 when loading a checkpoint and to the model's own otherwise.
    ``attentions`` defaults to True, and an adapter built without attentions refuses ``attentions=True``.
    ``revision`` only applies to loading a checkpoint, and ``name``, ``image_processor`` and ``names`` only to
    building an adapter: a ``ValueError`` says so rather than ignoring them.
    """
    if not isinstance(name_or_path, (ModelAdapter, nn.Module)):
        adapter = ModelAdapter.from_pretrained(name_or_path, revision=revision, dtype=dtype or "float32",
                                               device=device, attentions=True if attentions is None else attentions,
                                               name=name, names=names)
        if image_processor is not None:
            adapter.image_processor = image_processor
        return adapter
    if revision is not None:
        raise ValueError("revision= selects a checkpoint to load; this model is already loaded")
    if isinstance(name_or_path, ModelAdapter):
        adapter = name_or_path
        given = [k for k, v in (("name", name), ("image_processor", image_processor), ("names", names)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} configure a new adapter; {adapter.name} is already one "
                             "(build ModelAdapter(adapter.model, ...) instead)")
        if attentions and not adapter.attentions:
            raise ValueError(f"{adapter.name} was loaded without attentions but attentions=True was asked for; "
                             "build it with ModelAdapter(model, attentions=True)")
    else:
        adapter = ModelAdapter(name_or_path, attentions=True if attentions is None else attentions, name=name,
                               image_processor=image_processor, names=names)
    if dtype is not None or device is not None:
        adapter.model.to(device=device, dtype=None if dtype is None else resolve_dtype(dtype))
    return adapter
