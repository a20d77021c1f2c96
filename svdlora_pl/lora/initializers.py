"""LoRA initializers: how the factors of a freshly created PEFT LoRA model get their starting values.

An initializer is selected on :class:`svdlora_pl.model.QwenLoRAModule` by ``class_path``::

    model:
      initializer:
        class_path: svdlora_pl.initializers.RandomInit
        init_args:
          distribution: gaussian

Writing a new one means writing one subclass of :class:`LoRAInitializer`: it may pick PEFT's own
``init_lora_weights`` value (:meth:`LoRAInitializer.peft_init`), it may rewrite the factors (and, for
residual schemes, the frozen base weights) once the LoRA layers exist (:meth:`LoRAInitializer.initialize`), and a
data-driven one sets them from the fit's first training batches (:meth:`LoRAInitializer.initialize_with_data`,
e.g. :class:`~svdlora_pl.lora.gradient_init.GradientSVDInit`). The math lives in :mod:`svdlora_pl.lora.init_math`
as pure functions.

Residual schemes (``PiSSAInit``, ``MiLoRAInit``, ``SVDTeacherInit(mode="residual")``, ``PeftInit("pissa" |
"olora")``) replace the frozen W by W − scaling·B₀·A₀, so the model's output is unchanged at step 0. Their trained
adapter only makes sense on that modified base; :class:`~svdlora_pl.model.QwenLoRAModule` therefore saves it
converted to rank 2r, [B | B₀]·[A; −A₀], which applies to the *unmodified* base (see :mod:`svdlora_pl.lora.residual`).

Distributed training: every initializer is a deterministic function of the base weights, the factor file and its
seed, so all ranks compute the same factors (the SVD's sign ambiguity resolves identically for identical inputs);
Lightning's DDP also broadcasts rank zero's parameters, frozen ones included, when it wraps the model.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

import torch

from svdlora_pl.errors import InputError
from svdlora_pl.lora.init_math import Components

if TYPE_CHECKING:
    from svdlora_pl.lora.gradients import TrainingBatches


class LoRAInitializer:
    """Base class of LoRA initializers; subclasses override one or both hooks."""

    @property
    def modifies_base(self) -> bool:
        """Whether :meth:`initialize` rewrites the frozen base weights (a residual scheme)."""
        return False

    def peft_init(self) -> bool | str:
        """Value given to ``peft.LoraConfig(init_lora_weights=...)`` when the LoRA layers are created."""
        return True

    def initialize(self, model: torch.nn.Module, adapter_name: str) -> None:
        """Rewrite factors of ``model`` (a ``peft.PeftModel``) after creation; the default keeps PEFT's values."""

    @property
    def needs_data(self) -> bool:
        """Whether the initializer reads training batches (:meth:`initialize_with_data`)."""
        return False

    def initialize_with_data(
        self, model: torch.nn.Module, adapter_name: str, data: TrainingBatches
    ) -> dict[str, float]:
        """Set the factors from the fit's own training batches; the hook of data-driven initializers.

        ``QwenLoRAModule`` calls it once, at the start of a fresh fit (not on resume), after :meth:`initialize` and
        before the step-0 validation and the first optimizer step, on every process, on the fit's device and under its
        precision. ``data`` (:class:`~svdlora_pl.lora.gradients.TrainingBatches`) gives the first batches of the
        fit's training loader, its loss, and a mean over processes: a distributed run must leave identical factors on
        every rank. A residual scheme also rewrites the frozen weights here (``modifies_base``); the module then
        keeps the starting factors in its checkpoints so a resumed run rebuilds the same base. Returns what the
        initialization cost (logged under ``weights/init/``).
        """
        raise NotImplementedError(f"{type(self).__name__} reads no data")

    def spec(self) -> dict[str, Any]:
        """``{"class_path", "init_args"}``: the ``class_path`` form that rebuilds this initializer."""
        import inspect

        # jsonargparse's lazy_instance subclasses the class: name the first class of the package's own hierarchy.
        cls = next(
            c
            for c in type(self).__mro__
            if issubclass(c, LoRAInitializer) and not c.__name__.startswith("LazyInstance_")
        )
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        names = [n for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self" and p.kind in named]
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": {n: getattr(self, n) for n in names}}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def from_spec(value: LoRAInitializer | dict[str, Any]) -> LoRAInitializer:
    """The initializer itself, or one rebuilt from its :meth:`LoRAInitializer.spec` dict (checkpoint hparams)."""
    if isinstance(value, LoRAInitializer):
        return value
    import importlib

    path = str(value.get("class_path", ""))
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, LoRAInitializer)):
        raise InputError(f"model.initializer.class_path: {path!r} is not a LoRAInitializer class")
    return cls(**dict(value.get("init_args") or {}))


class RandomInit(LoRAInitializer):
    """PEFT's default random initialization: B = 0 so the model starts exactly at the base model.

    Args:
        distribution: Distribution of A. ``kaiming_uniform`` (PEFT's default, ``init_lora_weights=True``):
            A ~ U(-b, b) with b = sqrt(6 / ((1 + a²) · in_features)), a = sqrt(5); ``gaussian``
            (``init_lora_weights="gaussian"``): A ~ N(0, 1/r²).
    """

    def __init__(self, distribution: Literal["kaiming_uniform", "gaussian"] = "kaiming_uniform") -> None:
        if distribution not in ("kaiming_uniform", "gaussian"):
            raise ValueError(f"distribution must be 'kaiming_uniform' or 'gaussian', got {distribution!r}")
        self.distribution = distribution

    def peft_init(self) -> bool | str:
        return True if self.distribution == "kaiming_uniform" else "gaussian"


PEFT_DATA_FREE = ("gaussian", "olora", "orthogonal", "pissa", "pissa_niter_<n>")
"""PEFT ``init_lora_weights`` values that need neither data nor quantization, accepted by :class:`PeftInit`."""


class PeftInit(LoRAInitializer):
    """One of PEFT's own data-free initializations, by its ``init_lora_weights`` name.

    ``gaussian`` (A ~ N(0, 1/r²), B = 0), ``orthogonal`` (A and B from orthogonal halves of a random r×r basis,
    B·A = 0; r must be even), ``olora`` (QR of W: B = Q_r, A = R_r, residual), ``pissa`` (exact SVD of W, residual),
    ``pissa_niter_<n>`` (randomized SVD with n subspace iterations, unseeded in PEFT; residual). Data-driven (eva,
    corda, lora_ga) and quantization (loftq) schemes are not data-free and are refused.

    Args:
        name: The ``init_lora_weights`` value.
    """

    def __init__(self, name: str = "pissa") -> None:
        if name not in PEFT_DATA_FREE[:-1] and not re.fullmatch(r"pissa_niter_\d+", name):
            raise InputError(f"model.initializer.init_args.name: {name!r} is not one of {', '.join(PEFT_DATA_FREE)}")
        self.name = name

    @property
    def modifies_base(self) -> bool:
        return self.name == "olora" or self.name.startswith("pissa")

    def peft_init(self) -> bool | str:
        return self.name


def set_factors(ref: Any, B: torch.Tensor, A: torch.Tensor) -> None:
    """Write B (out×k) and A (k×in) into the first k directions of ``ref``; directions k.. get B = 0 and keep A."""
    k = B.shape[1]
    ref.B[:, :k].copy_(B)
    ref.B[:, k:].zero_()
    ref.A[:k].copy_(A)  # rows k.. keep PEFT's random init, so every direction still receives gradient


def subtract_from_base(ref: Any) -> None:
    """Replace the frozen W of ``ref`` by W − scaling·B·A (float32 arithmetic, W's dtype kept)."""
    from svdlora_pl.lora.init_math import residual_weight

    weight = ref.layer.get_base_layer().weight
    weight.copy_(residual_weight(weight, ref.B, ref.A, ref.scaling))


class _WeightComponentsInit(LoRAInitializer):
    """Residual init from singular components of each base weight (shared by PiSSA and MiLoRA)."""

    components: Components = "principal"
    niter: int | None = None
    seed: int = 0

    @property
    def modifies_base(self) -> bool:
        return True

    def initialize(self, model: torch.nn.Module, adapter_name: str) -> None:
        from svdlora_pl.lora.init_math import weight_components
        from svdlora_pl.lora.layers import find_lora_layers

        with torch.no_grad():
            for ref in find_lora_layers(model, adapter_name):
                W = ref.layer.get_base_layer().weight
                B, A = weight_components(
                    W, ref.A.shape[0], ref.scaling, self.components, niter=self.niter, seed=self.seed
                )
                set_factors(ref, B, A)
                subtract_from_base(ref)


class PiSSAInit(_WeightComponentsInit):
    """PiSSA (Meng et al., 2024): LoRA holds the top-r singular components of W, the base keeps the rest.

    scaling·B·A = U_r·diag(σ_r)·V_rᵀ of the frozen weight W, √σ split to both factors; W ← W − scaling·B·A
    (float32 arithmetic), so the model's output is unchanged at step 0 and training moves the principal directions.
    Equals PEFT's ``init_lora_weights="pissa"`` (exact SVD) up to the SVD's signs, which cancel in B·A.

    Args:
        niter: ``None``: exact ``torch.linalg.svd`` (O(mn·min(m, n)) per module). ``n``: randomized SVD with n
            subspace iterations (``torch.svd_lowrank``, 10 oversampling columns), much faster on 7B-sized weights and
            accurate where the spectrum decays past r; PEFT's ``pissa_niter_n``, but seeded.
        seed: Seed of the randomized SVD's test matrix (ignored by the exact SVD).
    """

    def __init__(self, niter: int | None = None, seed: int = 0) -> None:
        if niter is not None and niter < 0:
            raise InputError(f"model.initializer.init_args.niter: must be >= 0 or null, got {niter}")
        self.niter = niter
        self.seed = seed


class MiLoRAInit(_WeightComponentsInit):
    """MiLoRA (Wang et al., 2024): LoRA holds the r *smallest* singular components of W, the base keeps the rest.

    scaling·B·A = U_[-r:]·diag(σ_[-r:])·V_[-r:]ᵀ, W ← W − scaling·B·A, so the output is unchanged at step 0 and the
    principal (pretrained) directions stay frozen. Needs the exact SVD of every target weight (seconds per 7B
    module on a GPU, about a minute on 2 CPU cores for the 3584×18944 MLP weights).
    """

    components = "minor"


class SVDTeacherInit(LoRAInitializer):
    """Start every LoRA layer from the SVD of a teacher update ΔW read from a factor file.

    ``warm_start``: each layer's update scaling·B·A equals the best rank-r approximation of the teacher's ΔW for that
    module (its top r singular directions, √σ split to both factors), so the model starts at base + the teacher's
    rank-r update. ``residual``: the same factors, and that update is also subtracted from the frozen base weight
    (float32 arithmetic), so the model's output is unchanged at step 0 while LoRA starts in the teacher's directions
    (PiSSA-style, with the teacher's subspace instead of W's). In bfloat16 the subtraction leaves the rounding of the
    stored residual weight (see :func:`svdlora_pl.lora.init_math.residual_weight`).

    Rank: a teacher of rank above r is truncated to its best rank-r part; a teacher of rank k below r fills the missing
    directions as PEFT's default does (A random, B zero columns), so the update is unchanged and every direction still
    receives gradient. Scaling (alpha/r or alpha/√r with rslora) is folded out, so the factors' B·A is the update.

    The factor file (``svdlora factorize`` / ``svdlora synthesize`` output, see :mod:`svdlora_pl.lora.factor_files`) must hold
    exactly the model's LoRA target modules, by base-model path, with matching shapes.

    Args:
        factors: Path of the teacher factor file (safetensors).
        mode: ``warm_start`` or ``residual``.
    """

    def __init__(self, factors: str, mode: Literal["warm_start", "residual"] = "warm_start") -> None:
        if mode not in ("warm_start", "residual"):
            raise InputError(f"model.initializer.init_args.mode: must be 'warm_start' or 'residual', got {mode!r}")
        self.factors = factors
        self.mode = mode

    @property
    def modifies_base(self) -> bool:
        return self.mode == "residual"

    def initialize(self, model: torch.nn.Module, adapter_name: str) -> None:
        from svdlora_pl.lora.factor_files import factors_for_layers
        from svdlora_pl.lora.init_math import warm_start_factors
        from svdlora_pl.lora.layers import find_lora_layers

        layers = find_lora_layers(model, adapter_name)
        teacher = factors_for_layers(self.factors, layers)
        with torch.no_grad():
            for ref in layers:
                B, A, _ = warm_start_factors(*teacher[ref.name], ref.A.shape[0], ref.scaling)
                set_factors(ref, B, A)
                if self.modifies_base:
                    subtract_from_base(ref)
