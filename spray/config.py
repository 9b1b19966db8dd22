"""The audit configuration: one YAML file, validated when loaded.

Every key, its default and its meaning is listed here and in docs/configuration.md (generated). Unknown keys are
rejected with the closest valid key suggested; wrong types and values are reported by key path. Relative
paths resolve against the folder of the config file.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spray.errors import ConfigError
from spray.lrp.composites import COMPOSITES as COMPOSITE_NAMES


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    factory: str = Field(
        description="'file.py:callable' or 'package.module:callable' returning an nn.Module"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the factory")
    weights: Path | None = Field(
        default=None, description="state_dict saved with torch.save; loaded with weights_only=True"
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


class AttributionConfig(_Section):
    method: Literal["lrp", "gradient", "gradient_x_input", "smoothgrad", "integrated_gradients", "occlusion"] = Field(
        default="lrp", description="attribution method: lrp, or a gradient/perturbation method for any model"
    )
    composite: str = Field(default="epsilon_plus_flat", description=f"one of {', '.join(COMPOSITE_NAMES)}")
    rules: list[dict[str, Any]] | None = Field(
        default=None,
        description="user-defined composite, matched in order before the named composite (which fills in the "
        "rest): entries {layers: [conv|linear|activation|avgpool|maxpool|sum|batchnorm or a torch.nn class] "
        "or names: ['classifier.*'], first: true|false, rule: zero|epsilon|gamma|alpha_beta|zplus|flat|wsquare|"
        "zbox|pass|norm|gradient, plus that rule's parameters (epsilon, gamma, alpha, beta, low, high, "
        "stabilizer)}",
    )
    stabilizer: float = Field(default=1e-6, gt=0, description="small constant of the non-epsilon LRP denominators")
    autocast: Literal["bf16", "fp16"] | None = Field(
        default=None, description="CUDA only: run the forward pass under autocast; relevance stays float32"
    )
    samples: int = Field(default=16, ge=1, description="smoothgrad: noisy copies averaged")
    noise: float = Field(default=0.1, ge=0, description="smoothgrad: noise std as a fraction of each input's range")
    steps: int = Field(default=16, ge=1, description="integrated_gradients: interpolation steps (midpoint rule)")
    baseline: float = Field(
        default=0.0, description="integrated_gradients and occlusion: reference value, in model-input space"
    )
    patch: int = Field(default=4, ge=1, description="occlusion: side of the square patch, in pixels")
    stride: int | None = Field(default=None, ge=1, description="occlusion: patch step (default: patch)")
    epsilon: float = Field(default=1e-6, gt=0, description="stabiliser of the epsilon rule")
    gamma: float = Field(default=0.25, ge=0, description="gamma of the gamma rule")
    alpha: float = Field(default=2.0, ge=1, description="alpha of the alpha-beta rule (beta = alpha - 1)")
    low: list[float] | None = Field(
        default=None, description="z^B lower input bound per channel (default: (0 - mean) / std)"
    )
    high: list[float] | None = Field(
        default=None, description="z^B upper input bound per channel (default: (1 - mean) / std)"
    )
    batch_size: int = Field(default=64, ge=1, description="images per forward/backward pass")
    shard_size: int = Field(default=512, ge=1, description="images per cached Dask task")
    loader_workers: int = Field(
        default=4, ge=0,
        description="threads decoding the next batches while the model runs (0: decode in the attributing "
        "thread); at most two batches are decoded ahead, so memory stays bounded",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: cuda when available")

    @field_validator("composite")
    @classmethod
    def _known_composite(cls, value: str) -> str:
        if value not in COMPOSITE_NAMES:
            close = difflib.get_close_matches(value, COMPOSITE_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown composite {value!r}{hint}; expected one of {', '.join(COMPOSITE_NAMES)}")
        return value

    @field_validator("rules")
    @classmethod
    def _valid_rules(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value is not None:
            from spray.lrp.composites import custom_composite  # imports torch: only when rules are given

            custom_composite(value)  # raises ValueError naming the entry
        return value


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


class EmbeddingConfig(_Section):
    methods: list[Literal["tsne", "umap"]] = Field(
        default_factory=lambda: ["tsne", "umap"], description="2-D embeddings drawn in the report"
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


class CacheConfig(_Section):
    directory: Path = Field(default=Path(".spray-cache"), description="where intermediates are stored")
    enabled: bool = Field(default=True, description="false: compute everything afresh, store nothing")


class DaskConfig(_Section):
    address: str | None = Field(default=None, description="scheduler address of an existing cluster")
    scheduler: Literal["threads", "processes", "synchronous"] = Field(
        default="threads", description="local scheduler when no address is given"
    )
    workers: int | None = Field(default=None, ge=1, description="local workers (default: one per core); also the processes drawing the report's class pages (default: one per core, at most 8)")


class DemoConfig(_Section):
    directory: Path = Field(default=Path("demo-case"), description="where the demo images and model are built")
    target_class: int = Field(default=3, ge=0, le=9, description="digit whose images get the artifact")
    artifact: Literal["watermark", "frame", "tag", "stripe", "none"] = Field(
        default="watermark", description="what is planted ('none' trains a clean model)"
    )
    position: Literal["top-left", "top-right", "bottom-left", "bottom-right"] = Field(
        default="bottom-right", description="corner the artifact is planted in (frame: ignored)"
    )
    fraction: float = Field(default=0.25, ge=0, le=1, description="share of the target class's images that get it")
    batchnorm: bool = Field(default=False, description="train the CNN with BatchNorm layers")
    variants: int = Field(default=3, ge=1, description="augmented images made from each bundled digit")
    epochs: int = Field(default=8, ge=1, description="training epochs")
    seed: int = Field(default=0, description="seed of the images and of training")


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
    attribution: AttributionConfig = Field(default_factory=AttributionConfig, description="stage 1: heatmaps")
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig, description="stage 2")
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig, description="stage 3: spectral clustering")
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig, description="stage 3: 2-D views")
    flagging: FlaggingConfig = Field(default_factory=FlaggingConfig, description="stage 4: evidence")
    cache: CacheConfig = Field(default_factory=CacheConfig, description="intermediates on disk")
    dask: DaskConfig = Field(default_factory=DaskConfig, description="where the graph runs")
    output: Path = Field(default=Path("spray-report"), description="folder for index.html and summary.json")
    report: ReportConfig = Field(default_factory=ReportConfig, description="how the report shows the run")
    demo: DemoConfig | None = Field(
        default=None, description="build the planted-watermark digits case before auditing (the demo)"
    )
    path: Path | None = Field(default=None, exclude=True, description="the file this was loaded from")


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


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SprayConfig:
    """Read, validate and resolve a YAML config.

    ``overrides`` is a nested dict merged over the file's content before validation (the command line
    uses it for ``--output`` and ``--classes``). Raises ConfigError naming the file and key path.
    """
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
    return config_from_dict(_merge(raw, overrides or {}), base_dir=path.parent, source=path)


def config_from_dict(raw: dict[str, Any], base_dir: Path, source: Path | None = None) -> SprayConfig:
    """Validate a config given as a dict; relative paths resolve against ``base_dir``."""
    where = str(source) if source is not None else "config"
    try:
        config = SprayConfig.model_validate(raw)
    except ValidationError as error:
        lines = [_describe(item) for item in error.errors()]
        raise ConfigError(f"{where} is invalid:\n" + "\n".join(f"  - {line}" for line in lines)) from None
    return _resolve_paths(config, base_dir.resolve(), source)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(item: dict[str, Any]) -> str:
    location = list(item["loc"])
    key_path = ".".join(str(part) for part in location) or "(top level)"
    if item["type"] == "extra_forbidden":
        parent = _model_at(location[:-1])
        valid = sorted(parent.model_fields) if parent is not None else []
        valid = [name for name in valid if name != "path"]
        close = difflib.get_close_matches(str(location[-1]), valid, n=1, cutoff=0.5)
        hint = f"; did you mean {'.'.join(map(str, location[:-1] + [close[0]]))!r}?" if close else ""
        return f"unknown key {key_path!r}{hint} (valid keys here: {', '.join(valid)})"
    if item["type"] == "missing":
        return f"{key_path}: required key is missing"
    message = item["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    given = item.get("input")
    shown = "" if isinstance(given, dict) or given is None else f" (got {given!r})"
    return f"{key_path}: {message}{shown}"


def _model_at(location: list[Any]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = SprayConfig
    for part in location:
        if model is None or isinstance(part, int):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model


def _resolve_paths(config: SprayConfig, base_dir: Path, source: Path | None) -> SprayConfig:
    def resolve(value: Path | None) -> Path | None:
        if value is None:
            return None
        value = Path(value).expanduser()
        return value if value.is_absolute() else (base_dir / value).resolve()

    update: dict[str, Any] = {
        "model": config.model.model_copy(update={"weights": resolve(config.model.weights)}),
        "data": config.data.model_copy(
            update={"manifest": resolve(config.data.manifest), "root": resolve(config.data.root)}
        ),
        "cache": config.cache.model_copy(update={"directory": resolve(config.cache.directory)}),
        "output": resolve(config.output),
        "path": source.resolve() if source is not None else None,
    }
    factory_file, _, name = config.model.factory.rpartition(":")
    if factory_file.endswith(".py"):
        update["model"] = update["model"].model_copy(update={"factory": f"{resolve(Path(factory_file))}:{name}"})
    if config.demo is not None:
        update["demo"] = config.demo.model_copy(update={"directory": resolve(config.demo.directory)})
    return config.model_copy(update=update)
