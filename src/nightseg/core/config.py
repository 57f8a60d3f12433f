"""Training recipes: YAML files validated into nested dataclasses, plus ``key=value`` overrides.

A recipe is a YAML file whose sections mirror the dataclasses below::

    base: supervised_cityscapes.yaml     # optional: start from another recipe (path relative to this file)
    recipe: my_run                       # name saved in checkpoint metadata (default: the file's stem)
    seed: 0
    method: {name: supervised, ...}      # keys of nightseg.methods.<name>.Params
    data:   {root: ..., batch_size: 2, workers: 2, source: {...}, target: {...}, val: {...}}
    model:  {name: pspnet_r101, pretrained: true, num_classes: 19, options: {}}
    optim:  {name: sgd, lr: 2.5e-4, momentum: 0.9, weight_decay: 5.0e-4, poly_power: 0.9}
    train:  {max_steps: 100000, val_every: 2000, state_every: 1000, precision: auto, devices: auto, ...}

`load_config(path, overrides)` merges the ``base`` chain (dicts merge key by key, everything else is
replaced), applies dotted overrides such as ``train.max_steps=200`` or ``data.source.crop=[128,256]``
(values are parsed as YAML, so ``null``/``true``/lists work), and validates every key and type. Any
unknown or mistyped key raises a one-line `UserError` naming the file (or the override), the key, and
the valid keys or the expected type.

Extension point for recipes: the ``method`` section is validated against the ``Params`` dataclass of
the module ``nightseg.methods.<method.name>`` (which must include a ``name: str`` field). Adding a
method therefore needs no change here: write ``methods/<name>.py`` with ``Params`` and ``build(cfg)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from nightseg.core.errors import UserError


# --------------------------------------------------------------------------------------------- schema
@dataclass
class StreamConfig:
    """One dataset stream: which dataset, which split, and how its samples are augmented.

    ``dataset`` is a name for `nightseg.data.build_dataset` (e.g. ``cityscapes``, ``nightcity``,
    ``dark_zurich``) or ``"package.module:factory"`` for a dataset factory of your own that takes
    ``(root, split, transform=None, **options)``. ``null`` leaves the stream unused.
    """

    dataset: str | None = None
    split: str = "train"
    root: str | None = None
    """Dataset root; a relative path is taken inside ``data.root``, ``null`` is ``data.root`` itself."""
    resize: list[int] | None = None
    """``[H, W]`` resize applied before augmentation (``null``: native size)."""
    scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    """Random rescale range ``[lo, hi]`` (training streams only)."""
    crop: list[int] | None = None
    """``[H, W]`` random crop after rescaling (``null``: no crop)."""
    out_size: list[int] | None = None
    """``[H, W]`` resize of each crop (DANNet's code resizes its 960 Dark Zurich crops to 512; ``null``: none)."""
    flip: bool = False
    """Random horizontal flip (training streams only)."""
    limit: int | None = None
    """Use only the first ``limit`` samples (e.g. a quick validation subset)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the dataset builder."""


@dataclass
class DataConfig:
    """The training streams and the validation set.

    ``source`` is the labelled training stream every recipe uses; ``target`` is an optional second
    training stream (labelled night images for joint training, unlabelled day/night pairs for UDA).
    Each training batch holds ``batch_size`` samples of every stream in use, as
    ``batch = {"source": {...}, "target": {...}}``. ``val`` is the target-domain validation set.
    """

    root: str = "data"
    batch_size: int = 2
    workers: int = 2
    source: StreamConfig = field(default_factory=lambda: StreamConfig(flip=True))
    target: StreamConfig = field(default_factory=StreamConfig)
    val: StreamConfig = field(default_factory=lambda: StreamConfig(split="val"))
    val_batch_size: int = 1


@dataclass
class ModelConfig:
    """The segmenter: ``nightseg.models.build_segmenter(name, num_classes, pretrained, **options)``.

    ``name`` may also be ``"package.module:factory"`` (same signature) for a model of your own.
    """

    name: str = "pspnet_r101"
    num_classes: int = 19
    pretrained: bool = False
    encoder_weights: str | None = None
    """A local ImageNet encoder file (torchvision / timm / smp / NVlabs / mmseg layout) loaded instead of
    downloading the ImageNet weights; implies an ImageNet-initialised encoder (`nightseg.models.pretrained.imagenet`)."""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimiser and the per-step poly schedule ``lr = base_lr * (1 - step / max_steps) ** poly_power``."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    poly_power: float = 0.9
    warmup_steps: int = 0
    """Linear warm-up from 0 over this many steps before the poly decay (0: none, as the seeds)."""
    grad_clip: float | None = None
    """Clip the gradient norm to this value (``null``: no clipping)."""


@dataclass
class TrainConfig:
    """The loop: iteration-based (``max_steps``), with periodic validation and resumable state."""

    max_steps: int = 1000
    val_every: int = 500
    """Validate on ``data.val`` every this many steps (and always at the end); 0 disables."""
    state_every: int = 250
    """Write the resumable training state (and ``checkpoints/last``) every this many steps."""
    log_every: int = 10
    """Send the training losses to TensorBoard/CSV every this many steps."""
    num_images: int = 4
    """Sample predictions written to TensorBoard and ``logs/images/`` at each validation."""
    accelerator: str = "auto"
    """``auto`` (GPU if available), ``cpu``, ``gpu``/``cuda``."""
    devices: int | str = "auto"
    """Processes per node: ``auto`` (all GPUs, or 1 CPU process) or a number."""
    num_nodes: int = 1
    strategy: str = "auto"
    """``auto`` (DDP when more than one process), ``ddp``, ``ddp_spawn`` ... (Lightning names)."""
    precision: str = "auto"
    """``auto``: bf16-mixed on GPUs that support it, else 16-mixed; 32-true on the CPU."""
    deterministic: bool | str = "auto"
    """``auto``: deterministic algorithms on the CPU only (several CUDA kernels have no deterministic form)."""
    progress: bool = True
    cpu_threads: int | None = None
    """torch CPU threads (``null``: torch's default, one per core). On a busy shared machine 1 is often
    faster; a resumed run reproduces the uninterrupted one exactly only with the same thread count."""


@dataclass
class Config:
    """A fully resolved training recipe (see the module docstring for the YAML form)."""

    method: Any = None
    """An instance of ``nightseg.methods.<name>.Params``."""
    recipe: str = ""
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain YAML/JSON-able data (what ``RUN_DIR/config.yaml`` holds)."""
        return config_to_dict(self)


# --------------------------------------------------------------------------------------------- loading
def method_params_class(name: str, source: str = "config") -> type:
    """Return the ``Params`` dataclass of ``nightseg.methods.<name>``; UserError for an unknown method."""
    if not isinstance(name, str) or not name.isidentifier():
        raise UserError(f"{source}: method.name={name!r} is not a method name; expected e.g. 'supervised'")
    try:
        module = importlib.import_module(f"nightseg.methods.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"nightseg.methods.{name}":
            raise
        raise UserError(f"{source}: unknown method '{name}'; available: {', '.join(list_methods())}") from None
    params = getattr(module, "Params", None)
    if params is None or not dataclasses.is_dataclass(params):
        raise UserError(f"{source}: nightseg.methods.{name} defines no Params dataclass, so it is not a training method")
    return params


def list_methods() -> list[str]:
    """Return the names of the training methods (modules of `nightseg.methods` with a ``Params`` class)."""
    folder = Path(__file__).parent.parent / "methods"
    names = []
    for path in sorted(folder.glob("*.py")):
        if not path.stem.startswith("_") and "class Params" in path.read_text(encoding="utf-8"):
            names.append(path.stem)
    return names


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Return the YAML mapping at `path` with its ``base`` chain merged in (base first)."""
    given = path
    path = path.resolve()
    if path in chain:
        raise UserError(f"{path}: circular 'base' chain: {' -> '.join(str(p) for p in (*chain, path))}")
    if not path.is_file():
        where = f" (base of {chain[-1]})" if chain else ""
        # name the path as the user typed it (not its resolved form inside the package), with the nearest names
        near = difflib.get_close_matches(given.name, [p.name for p in given.parent.glob("*.y*ml")], n=2)
        hint = f"; did you mean {' or '.join(str(given.parent / n) for n in near)}?" if near else ""
        raise UserError(f"{given}: config file not found{where}{hint}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise UserError(f"{path}: invalid YAML ({detail})") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); is it a recipe YAML file?") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping of sections (method, data, model, ...), got {type(raw).__name__}")
    bases = raw.pop("base", None)
    if bases is None:
        return raw
    if not isinstance(bases, (str, list)):
        raise UserError(f"{path}: 'base' must be a file name or a list of file names, got {bases!r}")
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        if not isinstance(base, str):
            raise UserError(f"{path}: 'base' must be a file name or a list of file names, got {base!r}")
        merged = _merge(merged, _read_yaml(path.parent / base, (*chain, path)))
    return _merge(merged, raw)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """Return ``(key path, value)`` of a ``key.sub=value`` override; the value is parsed as YAML."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"override {item!r}: expected KEY=VALUE with a dotted key, e.g. train.max_steps=200")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key.split("."), value


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Return the validated `Config` of the recipe at `path` with ``key=value`` `overrides` applied.

    Raises a UserError naming the file (or the override) and the key for anything unknown or mistyped.
    """
    path = Path(path)
    raw = _read_yaml(path)
    own = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if "recipe" not in own:  # a recipe inheriting from a base is named after its own file
        raw["recipe"] = path.stem
    overridden: dict[str, str] = {}
    for item in overrides:
        keys, value = parse_override(item)
        target = raw
        for key in keys[:-1]:
            if not isinstance(target.get(key), dict):
                target[key] = {}
            target = target[key]
        target[keys[-1]] = value
        overridden[".".join(keys)] = item
    cfg = config_from_dict(raw, source=str(path), overridden=overridden)
    # the keys set on the command line (not a dataclass field: never saved): a recipe may replace the rest of
    # the model section by what method.init_checkpoint was saved for, but not what the user set by hand
    cfg.overridden_keys = frozenset(overridden)  # type: ignore[attr-defined]
    return cfg


def config_from_dict(raw: dict[str, Any], source: str = "config", overridden: dict[str, str] | None = None) -> Config:
    """Return the validated `Config` built from plain data `raw` (`source` names it in error messages)."""
    checker = _Checker(source, overridden or {})
    raw = dict(raw)
    method = raw.pop("method", None)
    if not isinstance(method, dict) or "name" not in method:
        raise UserError(f"{source}: missing 'method: {{name: ...}}' section; available methods: {', '.join(list_methods())}")
    cfg = checker.build(Config, raw, "")
    cfg.method = checker.build(method_params_class(method["name"], source), method, "method")
    _check_values(cfg, source)
    return cfg


def config_to_dict(obj: Any) -> Any:
    """Return dataclasses (recursively) as plain dicts/lists/scalars."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): config_to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [config_to_dict(v) for v in obj]
    return obj


def dump_config(cfg: Config) -> str:
    """Return the resolved config as YAML text (sections in schema order)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def config_diff(a: Config, b: Config) -> list[str]:
    """Return the dotted keys whose values differ between two configs."""
    out: list[str] = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for key in sorted(set(x) | set(y)):
                walk(x.get(key), y.get(key), f"{prefix}.{key}" if prefix else str(key))
        elif x != y:
            out.append(prefix)

    walk(config_to_dict(a), config_to_dict(b), "")
    return out


# --------------------------------------------------------------------------------------------- checking
class _Checker:
    """Builds dataclasses from plain data, with one-line errors naming the source and the key."""

    def __init__(self, source: str, overridden: dict[str, str]) -> None:
        self.source = source
        self.overridden = overridden

    def where(self, key: str) -> str:
        if key in self.overridden:
            return f"{self.source}: override {self.overridden[key]!r}"
        for done, item in self.overridden.items():  # an override inside this section, or that created it
            if key.startswith(done + ".") or done.startswith(key + "."):
                return f"{self.source}: override {item!r}"
        return self.source

    def build(self, cls: type, raw: Any, prefix: str, default: Any = None) -> Any:
        """Return `default` (or ``cls()``) with the keys of `raw` replaced, nested sections merged likewise."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise UserError(f"{self.where(prefix)}: '{prefix}' must be a mapping of keys, got {raw!r}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in raw if k not in fields]
        if unknown:
            key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
            section = f"under '{prefix}'" if prefix else "at the top level"
            valid = ", ".join(sorted([*fields, *(["base"] if not prefix else [])]))
            raise UserError(f"{self.where(key)}: unknown key '{key}'; valid keys {section}: {valid}")
        base = default if default is not None else cls()
        values = {}
        for name, value in raw.items():
            key = f"{prefix}.{name}" if prefix else name
            values[name] = self.value(hints[name], value, key, getattr(base, name))
        return dataclasses.replace(base, **values)

    def value(self, hint: Any, value: Any, key: str, default: Any = None) -> Any:
        if hint is Any:
            return value
        if dataclasses.is_dataclass(hint):
            # a section given in YAML starts from the schema's default for that section (e.g. data.val
            # keeps split "val" when only its dataset is set)
            return self.build(hint, value, key, default if dataclasses.is_dataclass(default) else None)
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            options = [a for a in args if a is not type(None)]
            if len(options) == 1:  # X | None: the error about X is the most precise one
                return self.value(options[0], value, key, default)
            for arg in options:
                try:
                    return self.value(arg, value, key)
                except UserError:
                    continue
            raise UserError(f"{self.where(key)}: '{key}' expected {_describe(hint)}, got {value!r}")
        if origin is Literal:
            if value not in args:
                raise UserError(f"{self.where(key)}: '{key}' must be one of {', '.join(map(str, args))}, got {value!r}")
            return value
        if origin is list:
            if not isinstance(value, (list, tuple)):
                raise UserError(f"{self.where(key)}: '{key}' expected {_describe(hint)}, got {value!r}")
            return [self.value(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin is dict:
            if not isinstance(value, dict):
                raise UserError(f"{self.where(key)}: '{key}' expected a mapping, got {value!r}")
            return dict(value)
        if hint is bool:
            if isinstance(value, bool):
                return value
        elif hint is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, (float, str)) and not isinstance(value, bool):
                try:
                    number = float(value)
                except ValueError:
                    number = float("nan")
                if number.is_integer():
                    return int(number)
        elif hint is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
                try:
                    return float(value)
                except ValueError:
                    pass
        elif hint is str:
            if isinstance(value, str):
                return value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
        else:  # pragma: no cover - a schema type this checker does not know
            raise TypeError(f"config schema type {hint!r} of '{key}' is not supported")
        raise UserError(f"{self.where(key)}: '{key}' expected {_describe(hint)}, got {value!r}")


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is list:
        plural = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}
        return f"a list of {plural.get(args[0], _describe(args[0]))}"
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _pair(value: list | None, key: str, source: str, kind: str) -> None:
    if value is not None and len(value) != 2:
        raise UserError(f"{source}: '{key}' must be a pair [{kind}], got {value!r}")


def _check_values(cfg: Config, source: str) -> None:
    """Range checks that the types alone cannot express."""
    for name in ("source", "target", "val"):
        stream: StreamConfig = getattr(cfg.data, name)
        _pair(stream.resize, f"data.{name}.resize", source, "H, W")
        _pair(stream.crop, f"data.{name}.crop", source, "H, W")
        _pair(stream.out_size, f"data.{name}.out_size", source, "H, W")
        _pair(stream.scale, f"data.{name}.scale", source, "lo, hi")
        if stream.scale[0] <= 0 or stream.scale[0] > stream.scale[1]:
            raise UserError(f"{source}: 'data.{name}.scale' must be [lo, hi] with 0 < lo <= hi, got {stream.scale}")
        if stream.limit is not None and stream.limit < 1:
            raise UserError(f"{source}: 'data.{name}.limit' must be at least 1 or null, got {stream.limit}")
    if cfg.data.source.dataset is None:
        raise UserError(f"{source}: 'data.source.dataset' is required (the labelled training set, e.g. cityscapes)")
    positive = {
        "data.batch_size": cfg.data.batch_size,
        "data.val_batch_size": cfg.data.val_batch_size,
        "train.max_steps": cfg.train.max_steps,
        "train.num_nodes": cfg.train.num_nodes,
        "optim.lr": cfg.optim.lr,
    }
    for key, value in positive.items():
        if value <= 0:
            raise UserError(f"{source}: '{key}' must be positive, got {value}")
    non_negative = {
        "data.workers": cfg.data.workers,
        "train.val_every": cfg.train.val_every,
        "train.state_every": cfg.train.state_every,
        "train.num_images": cfg.train.num_images,
        "optim.warmup_steps": cfg.optim.warmup_steps,
        "optim.weight_decay": cfg.optim.weight_decay,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise UserError(f"{source}: '{key}' must be >= 0, got {value}")
    if cfg.train.cpu_threads is not None and cfg.train.cpu_threads < 1:
        raise UserError(f"{source}: 'train.cpu_threads' must be at least 1 or null, got {cfg.train.cpu_threads}")
    if cfg.train.log_every < 1:
        raise UserError(f"{source}: 'train.log_every' must be at least 1, got {cfg.train.log_every}")
    if isinstance(cfg.train.devices, str) and cfg.train.devices != "auto":
        raise UserError(f"{source}: 'train.devices' must be a number or 'auto', got {cfg.train.devices!r}")
    if isinstance(cfg.train.deterministic, str) and cfg.train.deterministic not in ("auto", "warn"):
        raise UserError(f"{source}: 'train.deterministic' must be true, false, 'warn' or 'auto', got {cfg.train.deterministic!r}")
    _pair(cfg.optim.betas, "optim.betas", source, "beta1, beta2")
