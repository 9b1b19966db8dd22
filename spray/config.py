"""The audit configuration: one YAML file, validated when loaded.

Every key, its default and its meaning is listed here and in docs/configuration.md (generated). Unknown keys are
rejected with the closest valid key suggested; wrong types and values are reported by key path. Relative
paths resolve against the folder of the config file.
"""

from __future__ import annotations

import difflib
import glob
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from dask.base import tokenize
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from spray.errors import ConfigError
from spray.names import COMPOSITE_NAMES, LAYER_KINDS, METHODS, REQUIRED_RULE_PARAMETERS, RULE_PARAMETERS


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def __dask_tokenize__(self) -> str:
        """The section's token for cache keys: its class and every value, as JSON (the same in every
        process, and different when any field differs)."""
        return tokenize(type(self).__qualname__, self.model_dump_json())


class ModelConfig(_Section):
    factory: str = Field(
        description="'file.py:callable' or 'package.module:callable' returning an nn.Module"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the factory")
    weights: Path | list[Path] | None = Field(
        default=None,
        description="state_dict saved with torch.save; loaded with weights_only=True. A list of such files, or "
        "a glob pattern ('checkpoints/epoch-*.pt', ordered by name with numbers compared as numbers), audits "
        "a series of checkpoints: the report is the last one's, with a timeline across them",
    )

    @field_validator("factory")
    @classmethod
    def _factory_has_callable(cls, value: str) -> str:
        module, sep, name = value.rpartition(":")
        if not sep or not module or not name.isidentifier():
            raise ValueError(
                f"expected 'models.py:build_model' or 'package.module:build_model', got {value!r}"
            )
        return value

    @field_validator("weights")
    @classmethod
    def _series_not_empty(cls, value: Path | list[Path] | None) -> Path | list[Path] | None:
        if isinstance(value, list) and not value:
            raise ValueError("expected a weights file, a glob pattern or a non-empty list of weights files")
        return value

    @property
    def is_series(self) -> bool:
        """Whether ``weights`` names a series of checkpoints (a list, or a glob resolved into one)."""
        return isinstance(self.weights, list)


INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


class ImageConfig(_Section):
    mode: Literal["L", "RGB"] = Field(default="RGB", description="PIL mode the images are converted to")
    size: tuple[int, int] = Field(
        default=(224, 224),
        description="[height, width] the model sees: the image is resized to it, or with shorter_side "
        "center-cropped to it",
    )
    shorter_side: int | None = Field(
        default=None, ge=1,
        description="resize so that the shorter side has this many pixels (aspect ratio kept), then center-crop "
        "to size: torchvision's Resize(shorter_side) + CenterCrop(size); default: resize straight to size",
    )
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"] = Field(
        default="bilinear", description="Pillow filter of the resize, as torchvision's InterpolationMode names it"
    )
    exif_orientation: bool = Field(
        default=False,
        description="rotate images as their EXIF orientation tag says; off by default because torchvision's "
        "ImageFolder loader and decode_image do not rotate, so a model trained with them saw unrotated pixels",
    )
    mean: list[float] = Field(default_factory=lambda: [0.0], description="per-channel mean subtracted")
    std: list[float] = Field(default_factory=lambda: [1.0], description="per-channel std divided by")

    @field_validator("size")
    @classmethod
    def _positive_size(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 1:
            raise ValueError(f"expected two positive integers [height, width], got {list(value)}")
        return value

    @model_validator(mode="after")
    def _channels_match(self) -> ImageConfig:
        channels = 1 if self.mode == "L" else 3
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) not in (1, channels):
                raise ValueError(
                    f"{key} has {len(values)} values; mode {self.mode} has {channels} channel(s): "
                    f"give 1 or {channels} values"
                )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        return self

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def per_channel(self, key: str) -> list[float]:
        values = getattr(self, key)
        return values * self.channels if len(values) == 1 else list(values)


class DataConfig(_Section):
    manifest: Path | None = Field(
        default=None, description="CSV with columns path,label; paths relative to the CSV's folder"
    )
    root: Path | None = Field(default=None, description="ImageFolder layout: one sub-folder per class")
    image: ImageConfig = Field(default_factory=ImageConfig, description="how images become model input")
    class_names: list[str] | None = Field(
        default=None,
        description="names of the model's outputs in order; string labels are mapped through it "
        "(default: sorted unique string labels, or the sorted sub-folders of root)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.manifest is None) == (self.root is None):
            raise ValueError("give exactly one of data.manifest (a CSV) or data.root (one folder per class)")
        return self


class AuditSection(_Section):
    classes: list[int | str] | None = Field(
        default=None, description="labels to audit (indices or class names); default: every class"
    )
    cross_class: bool = Field(
        default=False,
        description="also run one spectral analysis (and the embeddings) of the heatmaps of all audited "
        "classes together, shown as its own report section",
    )
    baseline: Path | None = Field(
        default=None,
        description="output folder of an earlier audit to compare with (read before the audit starts): "
        "summary.json gains a diff section (new, persisting and resolved flags, matched by members) and the "
        "report a 'Since the baseline' box; --baseline overrides it",
    )


class CompositeRule(_Section):
    """One entry of a user-defined composite: which layers (by type or by name) get which LRP rule."""

    layers: list[str] | None = Field(
        default=None, description=f"layer types: {', '.join(LAYER_KINDS)} or a torch.nn class name such as Conv2d"
    )
    names: list[str] | None = Field(default=None, description="fnmatch patterns on qualified layer names")
    first: bool = Field(default=False, description="only for the first layers the input meets")
    rule: str = Field(description=f"one of {', '.join(RULE_PARAMETERS)}")
    epsilon: float | None = Field(default=None, ge=0, description="epsilon rule: stabiliser")
    gamma: float | None = Field(default=None, ge=0, description="gamma rule: weight of positive contributions")
    alpha: float | None = Field(default=None, ge=1, description="alpha_beta rule: weight of positive contributions")
    beta: float | None = Field(default=None, ge=0, description="alpha_beta rule: weight of negative contributions")
    low: float | list[float] | None = Field(default=None, description="zbox rule: lowest input value (per channel)")
    high: float | list[float] | None = Field(default=None, description="zbox rule: highest input value (per channel)")
    stabilizer: float | None = Field(default=None, ge=0, description="denominator guard of the other rules")

    @field_validator("layers", "names", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("layers")
    @classmethod
    def _known_layers(cls, value: list[str] | None) -> list[str] | None:
        for name in value or []:
            # a torch.nn class name is CamelCase; whether torch has it is checked when the engine is built
            if name not in LAYER_KINDS and not (name[:1].isupper() and name.isidentifier()):
                raise ValueError(f"unknown layer type {name!r}; expected one of {', '.join(LAYER_KINDS)} "
                                 "or a torch.nn class name such as 'Conv2d'")
        return value

    @model_validator(mode="after")
    def _rule_and_parameters(self) -> CompositeRule:
        if self.rule not in RULE_PARAMETERS:
            close = difflib.get_close_matches(self.rule, RULE_PARAMETERS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown LRP rule {self.rule!r}{hint}; expected one of {', '.join(RULE_PARAMETERS)}")
        if (self.names is None) == (self.layers is None):
            raise ValueError("give exactly one of 'names' (patterns) or 'layers' (layer types)")
        given = set(self.parameters())
        allowed = RULE_PARAMETERS[self.rule]
        if given - set(allowed):
            takes = ", ".join(allowed) or "no parameters"
            raise ValueError(f"rule {self.rule!r} takes {takes}; got {', '.join(sorted(given - set(allowed)))}")
        missing = [name for name in REQUIRED_RULE_PARAMETERS.get(self.rule, ()) if name not in given]
        if missing:
            raise ValueError(f"rule {self.rule!r} needs {' and '.join(missing)}")
        return self

    def parameters(self) -> dict[str, Any]:
        """The rule's parameters that were given."""
        return {name: getattr(self, name) for name in _RULE_PARAMETER_FIELDS if getattr(self, name) is not None}

    def entry(self) -> dict[str, Any]:
        """The entry as ``spray.lrp.composites.custom_composite`` takes it."""
        where = {"names": self.names} if self.names is not None else {"layers": self.layers, "first": self.first}
        return {**where, "rule": self.rule, **self.parameters()}


_RULE_PARAMETER_FIELDS = ("epsilon", "gamma", "alpha", "beta", "low", "high", "stabilizer")


class _AttributionRun(_Section):
    """How attribution runs, whatever the method: not part of any cache key (RUNTIME_SETTINGS)."""

    batch_size: int = Field(default=64, ge=1, description="images per forward/backward pass")
    shard_size: int = Field(default=512, ge=1, description="images per cached Dask task")
    loader_workers: int = Field(
        default="auto", validate_default=True, ge=0,
        description="threads decoding the next batches while the model runs (auto: one per CPU this process "
        "may use, at most 8; 0: decode in the attributing thread); at most two batches are decoded ahead, so "
        "memory stays bounded",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: cuda when available")

    @field_validator("loader_workers", mode="before")
    @classmethod
    def _loader_workers(cls, value: Any) -> Any:
        return default_loader_workers() if value == "auto" else value


def default_loader_workers() -> int:
    """``attribution.loader_workers: auto``: one decoding thread per CPU this process may use (its affinity
    where the platform has one), at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


class LrpAttribution(_AttributionRun):
    """LRP with spray's engine (spray.lrp): a named composite, optionally preceded by user rules."""

    method: Literal["lrp"] = Field(
        default="lrp", description=f"attribution method: {', '.join(METHODS)}; lrp (the default) or a "
        "gradient/perturbation method for any model; each method has its own keys below"
    )
    composite: str = Field(default="epsilon_plus_flat", description=f"one of {', '.join(COMPOSITE_NAMES)}")
    rules: list[CompositeRule] | None = Field(
        default=None,
        description="user-defined composite, matched in order before the named composite (which fills in the "
        f"rest): entries {{layers: [{'|'.join(LAYER_KINDS)} or a torch.nn class] "
        f"or names: ['classifier.*'], first: true|false, rule: {'|'.join(RULE_PARAMETERS)}, plus that rule's "
        "parameters (epsilon, gamma, alpha, beta, low, high, stabilizer)}",
    )
    stabilizer: float = Field(default=1e-6, gt=0, description="small constant of the non-epsilon LRP denominators")
    autocast: Literal["bf16", "fp16"] | None = Field(
        default=None, description="CUDA only: run the forward pass under autocast; relevance stays float32"
    )
    channels_last: Literal["auto"] | bool = Field(
        default="auto", description="memory format of nets with 2-D convolutions: auto (channels-last on CPU, "
        "where its products are faster; NCHW on other devices), true (channels-last everywhere) or false "
        "(NCHW); channels-last rounds differently, within 1e-3 x max|R| of a float64 reference (docs/lrp.md)",
    )
    epsilon: float = Field(default=1e-6, gt=0, description="stabiliser of the epsilon rule")
    gamma: float = Field(default=0.25, ge=0, description="gamma of the gamma rule")
    alpha: float = Field(default=2.0, ge=1, description="alpha of the alpha-beta rule (beta = alpha - 1)")
    low: list[float] | None = Field(
        default=None, description="z^B lower input bound per channel (default: (0 - mean) / std)"
    )
    high: list[float] | None = Field(
        default=None, description="z^B upper input bound per channel (default: (1 - mean) / std)"
    )

    @field_validator("composite")
    @classmethod
    def _known_composite(cls, value: str) -> str:
        if value not in COMPOSITE_NAMES:
            close = difflib.get_close_matches(value, COMPOSITE_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown composite {value!r}{hint}; expected one of {', '.join(COMPOSITE_NAMES)}")
        return value


_BASELINE = ("reference value, in model-input space: where the integrated gradients' path starts, what the "
             "occluding patch is set to")


class GradientAttribution(_AttributionRun):
    """The plain gradient, or gradient times input, of the explained logit."""

    method: Literal["gradient", "gradient_x_input"]


class SmoothGradAttribution(_AttributionRun):
    """The gradient averaged over noisy copies of each input."""

    method: Literal["smoothgrad"]
    samples: int = Field(default=16, ge=1, description="noisy copies averaged")
    noise: float = Field(default=0.1, ge=0, description="noise std as a fraction of each input's range")


class IntegratedGradientsAttribution(_AttributionRun):
    """Integrated gradients from a constant baseline."""

    method: Literal["integrated_gradients"]
    steps: int = Field(default=16, ge=1, description="interpolation steps (midpoint rule)")
    baseline: float = Field(
        default=0.0, description=_BASELINE
    )


class OcclusionAttribution(_AttributionRun):
    """The logit's drop when a square patch is set to a baseline value."""

    method: Literal["occlusion"]
    patch: int = Field(default=4, ge=1, description="side of the square patch, in pixels")
    stride: int | None = Field(default=None, ge=1, description="patch step (default: patch)")
    baseline: float = Field(default=0.0, description=_BASELINE)


ATTRIBUTION_SECTIONS: tuple[type[_AttributionRun], ...] = (
    LrpAttribution, GradientAttribution, SmoothGradAttribution, IntegratedGradientsAttribution, OcclusionAttribution,
)
# The attribution section: which keys apply is chosen by ``method`` (lrp when not given).
AttributionConfig = Annotated[
    LrpAttribution | GradientAttribution | SmoothGradAttribution | IntegratedGradientsAttribution
    | OcclusionAttribution,
    Field(discriminator="method"),
]
_ATTRIBUTION_ADAPTER: TypeAdapter[Any] = TypeAdapter(AttributionConfig)


def attribution_config(**fields: Any) -> LrpAttribution | GradientAttribution | SmoothGradAttribution \
        | IntegratedGradientsAttribution | OcclusionAttribution:
    """The attribution section for ``method`` (default lrp) with the given keys; raises ValidationError."""
    return _ATTRIBUTION_ADAPTER.validate_python(_with_method(fields))


def _method_section(method: str) -> type[_AttributionRun] | None:
    return next((s for s in ATTRIBUTION_SECTIONS if method in get_args(s.model_fields["method"].annotation)), None)


def _with_method(value: Any) -> Any:
    """The attribution mapping with ``method`` filled in (lrp), or a ValueError naming an unknown method."""
    if not isinstance(value, dict):
        return value
    method = value.get("method", "lrp")
    if not isinstance(method, str) or method not in METHODS:
        close = difflib.get_close_matches(str(method), METHODS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown attribution.method {method!r}{hint}; expected one of {', '.join(METHODS)}")
    return {**value, "method": method}


class PreprocessingConfig(_Section):
    size: tuple[int, int] = Field(default=(32, 32), description="[height, width] after area averaging")
    normalize: Literal["sum_abs", "l2", "max_abs", "none"] = Field(
        default="sum_abs", description="divide each map by this norm (guarded against zero)"
    )
    absolute: bool = Field(default=False, description="take |relevance| before normalising")


class AnalysisConfig(_Section):
    neighbors: int = Field(default=10, ge=1, description="k of the symmetric kNN affinity graph")
    eigenvalues: int = Field(default=32, ge=2, description="smallest Laplacian eigenvalues computed")
    min_clusters: int = Field(default=2, ge=1, description="smallest number of clusters the eigengap may pick")
    max_clusters: int = Field(default=10, ge=1, description="largest number of clusters the eigengap may pick")
    seed: int = Field(default=0, description="seed of the eigensolver start vector and of k-means")
    space: Literal["heatmaps", "features"] = Field(
        default="heatmaps",
        description="what is clustered: the preprocessed heatmaps (SpRAY), or the activations of analysis.layer "
        "(a deep-feature lens; membership maps: NEON at the layer, propagated to the input by LRP; needs "
        "attribution.method lrp)",
    )
    layer: str | None = Field(
        default=None, description="with space features: the layer whose activations are clustered, a name of "
        "model.named_modules() such as '10' or 'classifier.1' (checked against the model before any work)",
    )

    @model_validator(mode="after")
    def _lens(self) -> AnalysisConfig:
        if self.space == "features" and not self.layer:
            raise ValueError("analysis.space 'features' clusters one layer's activations: give analysis.layer, "
                             "a name from the model's named_modules() (e.g. the penultimate layer)")
        if self.space == "heatmaps" and self.layer is not None:
            raise ValueError("analysis.layer applies to analysis.space: features (the heatmaps lens has no layer)")
        return self

    @model_validator(mode="after")
    def _cluster_range(self) -> AnalysisConfig:
        if self.min_clusters > self.max_clusters:
            raise ValueError(f"min_clusters ({self.min_clusters}) exceeds max_clusters ({self.max_clusters})")
        if self.max_clusters >= self.eigenvalues:
            raise ValueError(
                f"max_clusters ({self.max_clusters}) must be below eigenvalues ({self.eigenvalues}): "
                "the eigengap after the k-th eigenvalue needs the (k+1)-th"
            )
        return self


_EMBEDDINGS: tuple[Literal["tsne", "umap"], ...] = ("tsne", "umap")


class EmbeddingConfig(_Section):
    methods: list[Literal["tsne", "umap"]] = Field(
        default_factory=lambda: list(_EMBEDDINGS), description="2-D embeddings drawn in the report"
    )
    perplexity: float = Field(default=30.0, gt=0, description="t-SNE perplexity (capped at (N - 1) / 3)")
    umap_neighbors: int = Field(default=15, ge=2, description="UMAP n_neighbors")
    umap_min_dist: float = Field(default=0.1, ge=0, description="UMAP min_dist")
    seed: int = Field(default=0, description="seed of both embeddings")


class FlaggingConfig(_Section):
    threshold: float = Field(
        default=1.0, gt=0, description="flag when score >= this; 1.0: every line of evidence passes its threshold"
    )
    region_fraction: float = Field(
        default=0.2, gt=0, le=0.5, description="largest share of the image the cluster's region may cover"
    )
    fill: Literal["blur", "mean"] = Field(default="mean", description="how the region is masked")
    transplant_images: int = Field(default=200, ge=1, description="images of other classes the region is pasted into")
    min_cluster_size: int = Field(default=5, ge=1, description="clusters smaller than this are not scored")
    prototypes: int = Field(default=6, ge=1, description="samples shown per cluster in the report")
    seed: int = Field(default=0, description="seed of the transplant sampling")


# Region perturbation compares most-relevant-first with a random order; on fewer patches than this the two
# orders coincide too often to tell a faithful heatmap from an unfaithful one.
MIN_EVALUATION_PATCHES = 4


def _grid_side(side: int, patch_size: int) -> int:
    """Patches along one side of the centred grid (spray.evaluate.patch_grid): cut patches at both edges."""
    offset = (-side % patch_size) // 2
    return (side - 1 + offset) // patch_size + 1


class EvaluationConfig(_Section):
    """Faithfulness of the heatmaps by region perturbation (Samek et al. 2017): on a sample of each class,
    patches are destroyed most relevant first and in a random order; the class is marked when the first
    does not lower the logit more than the second (docs/method.md)."""

    enabled: bool = Field(default=True, description="measure faithfulness per class (needs the model)")
    samples: int = Field(
        default=32, ge=1,
        description="samples per class measured, drawn with seed (capped at the class's explained samples)",
    )
    patch_size: int = Field(
        default=9, ge=1, description="side of the square patches in pixels (Samek et al.: 9); a centred grid"
    )
    steps: int = Field(
        default=100, ge=1, description="patches destroyed per curve (Samek et al.: 100), capped at the patches"
    )
    perturbation: Literal["uniform", "blur", "constant"] = Field(
        default="blur",
        description="what replaces a destroyed patch: a Gaussian blur of the image (sigma 3 px), uniform noise "
        "in [0, 1] pixels (Samek et al.; adds texture the model never saw: docs/method.md), or black",
    )
    seed: int = Field(default=0, description="seed of the sampled samples, the random order and the noise")


class CacheConfig(_Section):
    directory: Path = Field(default=Path(".spray-cache"), description="where intermediates are stored")
    enabled: bool = Field(default=True, description="false: compute everything afresh, store nothing")


class DaskConfig(_Section):
    address: str | None = Field(default=None, description="scheduler address of an existing cluster")
    scheduler: Literal["threads", "processes", "synchronous"] = Field(
        default="threads", description="local scheduler when no address is given"
    )
    workers: int | None = Field(
        default=None, ge=1,
        description="local workers (default: one per core); also the processes drawing the report's class pages "
        "(default: one per core, at most 8)",
    )
    connect_timeout: float = Field(
        default=20.0, gt=0, description="seconds to wait for the scheduler at address before the run fails"
    )


class ReportConfig(_Section):
    absolute_paths: bool = Field(
        default=False,
        description="write absolute paths into the report and summary.json; by default paths are shown relative "
        "to the config file's folder, so a shared report does not expose the machine's folders",
    )


class SprayConfig(_Section):
    """A whole audit: model, data, what to audit, how, and where the results go."""

    model: ModelConfig = Field(description="the classifier to audit")
    data: DataConfig = Field(description="the images and their labels")
    audit: AuditSection = Field(default_factory=AuditSection, description="what to audit")
    attribution: AttributionConfig = Field(
        default_factory=LrpAttribution, description="stage 1: heatmaps; the keys that apply depend on method"
    )
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig, description="stage 2")
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig, description="stage 3: spectral clustering")
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig, description="stage 3: 2-D views")
    flagging: FlaggingConfig = Field(default_factory=FlaggingConfig, description="stage 4: evidence")
    evaluation: EvaluationConfig = Field(
        default_factory=EvaluationConfig, description="stage 4: how faithful the heatmaps are (region perturbation)"
    )
    cache: CacheConfig = Field(default_factory=CacheConfig, description="intermediates on disk")
    dask: DaskConfig = Field(default_factory=DaskConfig, description="where the graph runs")
    output: Path = Field(default=Path("spray-report"), description="folder for index.html and summary.json")
    report: ReportConfig = Field(default_factory=ReportConfig, description="how the report shows the run")
    path: Path | None = Field(default=None, exclude=True, description="the file this was loaded from")

    @field_validator("attribution", mode="before")
    @classmethod
    def _attribution_method(cls, value: Any) -> Any:
        return _with_method(value)

    @model_validator(mode="after")
    def _lens_needs_lrp(self) -> SprayConfig:
        if self.analysis.space == "features" and not isinstance(self.attribution, LrpAttribution):
            raise ValueError(f"analysis.space 'features' propagates each cluster's membership from analysis.layer to "
                             f"the input with LRP: it needs attribution.method lrp, not {self.attribution.method!r}")
        return self

    @model_validator(mode="after")
    def _enough_patches(self) -> SprayConfig:
        # With one patch (or a few) most-relevant-first and a random order destroy the same regions, so every
        # class would read as "not better than random": a verdict about the setting, not the heatmaps.
        if self.evaluation.enabled:
            height, width = self.data.image.size
            size = self.evaluation.patch_size
            patches = _grid_side(height, size) * _grid_side(width, size)
            if patches < MIN_EVALUATION_PATCHES:
                raise ValueError(
                    f"evaluation.patch_size {size} cuts the {height}x{width} images into {patches} patch(es); "
                    f"region perturbation needs at least {MIN_EVALUATION_PATCHES}: give a patch_size of at most "
                    f"{max(1, min(height, width) // 2)}, or evaluation.enabled: false")
        return self


# A config is a few dozen keys. These limits refuse inputs built to exhaust memory before they are built:
# a huge file, or YAML aliases that expand a few lines into millions of values (a "billion laughs").
MAX_CONFIG_CHARS = 1_000_000
MAX_CONFIG_VALUES = 100_000


def _check_expanded_size(path: Path, root: yaml.Node | None) -> None:
    """Raise ConfigError when the document, with every alias expanded, would hold more than
    ``MAX_CONFIG_VALUES`` values. Counted on the composed node graph, where an alias is a shared reference,
    so the count costs one visit per distinct node."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = 1  # a node that contains itself counts once (PyYAML refuses such documents anyway)
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(item) for item in node.value)
        else:
            total = 1
        sizes[id(node)] = min(total, MAX_CONFIG_VALUES + 1)
        return sizes[id(node)]

    if root is not None and size(root) > MAX_CONFIG_VALUES:
        raise ConfigError(f"{path}: with its aliases expanded the config holds more than {MAX_CONFIG_VALUES} "
                          "values; a config is expected to be a few dozen keys (an alias bomb?)")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The YAML file as a mapping of sections, unvalidated; raises ConfigError naming the file (and the line
    of a YAML error), and refuses files and alias expansions beyond MAX_CONFIG_CHARS / MAX_CONFIG_VALUES."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError(f"{path}: {len(text)} characters; a config is expected to be at most {MAX_CONFIG_CHARS}")
    try:
        _check_expanded_size(path, yaml.compose(text, Loader=yaml.SafeLoader))
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML: {getattr(error, 'problem', error)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, data, ...), got {type(raw).__name__}")
    return raw


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SprayConfig:
    """Read, validate and resolve a YAML config.

    ``overrides`` is a nested dict merged over the file's content before validation (the command line
    uses it for ``--output`` and ``--classes``). Raises ConfigError naming the file and key path.
    """
    path = Path(path)
    return config_from_dict(merge(read_config_file(path), overrides or {}), base_dir=path.parent, source=path)


def config_from_dict(raw: dict[str, Any], base_dir: Path, source: Path | None = None) -> SprayConfig:
    """Validate a config given as a dict; relative paths resolve against ``base_dir``."""
    where = str(source) if source is not None else "config"
    if "demo" in raw:
        raise ConfigError(f"{where}: the demo section is read by `python -m spray run` (spray.demo.load_demo), "
                          "which builds the case and then audits the rest of the config")
    return _resolve_paths(validated(SprayConfig, raw, where), base_dir.resolve(), source)


_Model = TypeVar("_Model", bound=BaseModel)


def validated(model: type[_Model], raw: Any, where: str, prefix: tuple[str, ...] = ()) -> _Model:
    """``model`` validated from ``raw``; a ConfigError lists every problem by key path (``prefix`` first)."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        lines = [_describe(model, item, prefix) for item in error.errors()]
        raise ConfigError(f"{where} is invalid:\n" + "\n".join(f"  - {line}" for line in lines)) from None


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` merged over ``base``, section by section (neither is changed)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(root: type[BaseModel], item: Any, prefix: tuple[str, ...] = ()) -> str:
    location, parent = _walk(root, list(item["loc"]))
    location = list(prefix) + location
    key_path = ".".join(str(part) for part in location) or "(top level)"
    if item["type"] == "extra_forbidden":
        return _unknown_key(location, parent)
    if item["type"] == "missing":
        return f"{key_path}: required key is missing"
    message = item["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    given = item.get("input")
    shown = "" if isinstance(given, dict) or given is None else f" (got {given!r})"
    return f"{key_path}: {message}{shown}"


def _unknown_key(location: list[Any], parent: type[BaseModel] | None) -> str:
    """The message for a key that ``parent`` does not have: the closest valid key, or the attribution method
    the key belongs to."""
    key_path = ".".join(str(part) for part in location)
    valid = [name for name in sorted(parent.model_fields) if name != "path"] if parent is not None else []
    close = difflib.get_close_matches(str(location[-1]), valid, n=1, cutoff=0.5)
    hint = f"; did you mean {'.'.join(map(str, location[:-1] + [close[0]]))!r}?" if close else ""
    if parent is not None and issubclass(parent, _AttributionRun):
        owners = [method for section in ATTRIBUTION_SECTIONS if location[-1] in section.model_fields
                  for method in get_args(section.model_fields["method"].annotation)]
        if owners:
            hint = f"; {location[-1]!r} applies to attribution.method {' or '.join(owners)}"
    return f"unknown key {key_path!r}{hint} (valid keys here: {', '.join(valid)})"


def _walk(root: type[BaseModel], location: list[Any]) -> tuple[list[Any], type[BaseModel] | None]:
    """An error's location without the union tags pydantic inserts (``attribution.lrp.x`` is shown as
    ``attribution.x``), and the model that holds its last key (None below a list or a dict)."""
    model: type[BaseModel] | None = root
    shown: list[Any] = []
    rest = list(location)
    while rest:
        part = rest.pop(0)
        shown.append(part)
        if not rest:
            break
        field = model.model_fields.get(str(part)) if model is not None and not isinstance(part, int) else None
        if field is not None and field.discriminator == "method":
            model = _method_section(str(rest.pop(0)))
            continue
        annotation = field.annotation if field is not None else None
        members = [c for c in getattr(annotation, "__args__", (annotation,))
                   if isinstance(c, type) and issubclass(c, BaseModel)]
        model = members[0] if members else None
    return shown, model


def _resolve_paths(config: SprayConfig, base_dir: Path, source: Path | None) -> SprayConfig:
    def resolve(value: Path | None) -> Path | None:
        if value is None:
            return None
        value = Path(value).expanduser()
        return value if value.is_absolute() else (base_dir / value).resolve()

    update: dict[str, Any] = {
        "model": config.model.model_copy(update={"weights": _resolve_weights(config.model.weights, resolve,
                                                                               source)}),
        "data": config.data.model_copy(
            update={"manifest": resolve(config.data.manifest), "root": resolve(config.data.root)}
        ),
        "cache": config.cache.model_copy(update={"directory": resolve(config.cache.directory)}),
        "audit": config.audit.model_copy(update={"baseline": resolve(config.audit.baseline)}),
        "output": resolve(config.output),
        "path": source.resolve() if source is not None else None,
    }
    factory_file, _, name = config.model.factory.rpartition(":")
    if factory_file.endswith(".py"):
        update["model"] = update["model"].model_copy(update={"factory": f"{resolve(Path(factory_file))}:{name}"})
    return config.model_copy(update=update)


_GLOB_CHARACTERS = frozenset("*?[")


def _resolve_weights(weights: Path | list[Path] | None, resolve: Callable[[Path | None], Path | None],
                     source: Path | None) -> Path | list[Path] | None:
    """``model.weights`` resolved: a single file as it is (a missing one is reported when the model is loaded,
    exit 4); a list with every file checked; a pattern that names no file as it is but has glob characters
    expanded into the files it matches, ordered by ``natural_order``. ConfigError (exit 2) naming the key and
    the path for a listed file that is missing, a pattern that matches nothing, or a file listed twice."""
    where = f"{source}: " if source is not None else ""
    if weights is None:
        return None
    if not isinstance(weights, list):
        path = resolve(weights)
        assert path is not None
        if path.exists() or not _GLOB_CHARACTERS & set(str(weights)):
            return path
        matches = sorted((Path(p) for p in glob.glob(str(path)) if Path(p).is_file()), key=natural_order)
        if not matches:
            raise ConfigError(f"{where}model.weights: the pattern {path} matches no file; expected one or more "
                              "state_dict files (a series of checkpoints)")
        return matches
    paths = [resolve(item) for item in weights]
    seen: dict[Path, int] = {}
    for position, path in enumerate(paths):
        assert path is not None
        if not path.is_file():
            raise ConfigError(f"{where}model.weights[{position}]: weights file not found: {path}")
        if path in seen:
            raise ConfigError(f"{where}model.weights[{position}]: {path} is listed twice (also at "
                              f"model.weights[{seen[path]}]); list each checkpoint once")
        seen[path] = position
    return [path for path in paths if path is not None]


def natural_order(path: Path) -> list[Any]:
    """Sort key of a path by name with runs of digits compared as numbers: ``epoch-2.pt`` before
    ``epoch-10.pt``."""
    parts: list[Any] = re.split(r"(\d+)", str(path))
    parts[1::2] = [int(part) for part in parts[1::2]]
    return parts
