"""Lightning integration: :class:`NoisyRNNCallback` trains any LightningModule's RNNs as Noisy RNNs.

Works with any LightningModule without touching model code, on either Lightning distribution
(``lightning.pytorch`` or ``pytorch_lightning``: the callback subclasses the ``Callback`` of every installed one,
:mod:`.distributions`), so it also drops into the pipelines of Darts, NeuralForecast and GluonTS
(``docs/frameworks.md``). Model families whose ``training_step`` does more than compute the loss provide the loss
closure of the regularizer modes through the ``nrnn_loss_closure`` hook (the forecasting adapter does, for
pytorch-forecasting models; the frameworks adapter for Darts and NeuralForecast)::

    trainer = lightning.pytorch.Trainer(callbacks=[NoisyRNNCallback(NoiseConfig(additive=0.05, seed=0))])
    trainer.fit(model, train_dataloaders=...)

What the callback does during ``fit``:

* ``setup("fit")``: :func:`~nrnn_plugin.register_noise` on the LightningModule (every supported recurrent
  layer becomes noisy; parameters, ``state_dict`` keys and hyper-parameters are untouched);
  ``teardown("fit")`` (or an exception) removes it again, so the trained model is the vanilla model.
* Noise is injected in training forwards only. Validation inside ``fit``, ``test`` and ``predict`` run in
  eval mode, which is the original fused forward: noise-free and bit-identical to the plain model.
* The config's schedule sets the noise level before every training batch (``Schedule.factor`` of the global
  step or the epoch); the level is logged as ``train_nrnn_noise_level``, and the sigmas in effect (the
  configured levels times that factor) as ``train_nrnn_sigma_additive`` and ``train_nrnn_sigma_multiplicative``.
* With ``mode="regularizer"`` or ``"both"`` the model instance's ``training_step`` is wrapped: the explicit
  regularizer (``docs/regularizer.md``) is added to the returned loss and logged as ``train_nrnn_reg``. Its
  passes start from the global RNG state the step started from (the same dropout masks and sampled windows as
  the step's own loss), and the training run's random stream continues where the step left it.
* The callback's state (config and the noise streams of every rank) goes into checkpoints, so
  ``trainer.fit(..., ckpt_path=...)`` continues the same noise streams. Checkpoints still load into the
  vanilla model class with ``load_from_checkpoint``: nothing is added to the hyper-parameters or weights.
* Pickled (Darts stores its callbacks inside saved models, NeuralForecast inside checkpoint hyper-parameters,
  ray sends them to workers), the callback is its class and the plain-data config only: a restricted
  unpickler needs this one class allow-listed (``nrnn_plugin.adapters.darts`` registers it with Darts). Deep
  copies (NeuralForecast and Darts copy their models and callbacks) keep the config and the noise-stream state
  but never the module of a running fit.

``import nrnn_plugin`` does not import this module; ``nrnn_plugin.NoisyRNNCallback`` does (it needs a Lightning
distribution: ``ImportError`` naming the options without one).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.divergence import FiniteWatch
from nrnn_plugin.integrations.distributions import callback_base
from nrnn_plugin.integrations.steps import (
    LossClosure,
    StepRng,
    batch_size,
    default_loss_closure,
    logging_suppressed,
    loss_of,
    with_loss,
)
from nrnn_plugin.noise import distributed_rank
from nrnn_plugin.plugins.manager import PluginError, first_result
from nrnn_plugin.regularizer import regularized_loss
from nrnn_plugin.runtime import noise_runtimes, set_noise_level
from nrnn_plugin.swap import is_noisy, register_noise, remove_noise
from nrnn_plugin.validation import check_bool

if TYPE_CHECKING:  # either distribution's classes; only their hooks are used
    from lightning.pytorch import LightningModule, Trainer

__all__ = ["NoisyRNNCallback", "LossClosure", "default_loss_closure", "logging_suppressed"]

#: The Lightning ``Callback`` base(s): :func:`~nrnn_plugin.integrations.distributions.callback_base`.
_CallbackBase: Any = callback_base()

LEVEL_METRIC = "train_nrnn_noise_level"
SIGMA_METRICS = {"additive": "train_nrnn_sigma_additive", "multiplicative": "train_nrnn_sigma_multiplicative"}
REG_METRIC = "train_nrnn_reg"
_STATE_VERSION = 1


class NoisyRNNCallback(_CallbackBase):
    """Train the recurrent layers of a LightningModule as Noisy RNNs during ``fit``.

    Args:
        config: a :class:`~nrnn_plugin.NoiseConfig` or a mapping of its fields (as written in a LightningCLI
            YAML). ``None`` reads the configuration from ``NRNN_*`` environment variables
            (:meth:`NoiseConfig.from_env`).
        use_env: when ``True``, ``NRNN_*`` environment variables override fields of ``config``
            (``NRNN_ENABLED=0`` switches a configured pipeline off, ``NRNN_ADDITIVE=0.1`` changes the level).
        loss_closure: ``closure(module, batch, batch_idx) -> loss`` used by the explicit regularizer to
            recompute the training loss on the same batch without side effects. The default is the closure a
            plugin provides for the module's family (``nrnn_loss_closure`` hook: pytorch-forecasting, Darts and
            NeuralForecast models),
            else :func:`default_loss_closure` (LightningModules whose ``training_step`` only logs besides
            computing the loss).
        check_finite: watch the noisy forwards of ``fit`` and warn once, with the noise levels in effect, when
            one returns non-finite values (:class:`nrnn_plugin.divergence.FiniteWatch`; one ``isfinite``
            reduction per noisy forward, so opt-in).

    The callback is a no-op when the config is disabled (``enabled: false``) or injects no noise (both
    levels zero). A model that is already noisy when ``fit`` starts keeps its own noise registration; the
    callback then only drives schedules, the regularizer and checkpoint state, and leaves it in place.
    """

    def __init__(
        self,
        config: NoiseConfig | Mapping[str, Any] | None = None,
        *,
        use_env: bool = False,
        loss_closure: LossClosure | None = None,
        check_finite: bool = False,
    ) -> None:
        super().__init__()
        self.config = _coerce_config(config, use_env)
        self.loss_closure = loss_closure
        self.check_finite = check_bool("NoisyRNNCallback.check_finite", check_finite)
        self._watch: FiniteWatch | None = None
        self._module: LightningModule | None = None
        self._registered_here = False
        self._wrapped_step = False
        self._previous_step: Any = None
        self._source_states: dict[str, dict[str, Any]] = {}
        self._pending: dict[str, Any] | None = None
        #: the schedule's current multiplier on the noise levels (set before every training batch).
        self.level = 1.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(config={self.config!r})"

    # ------------------------------------------------------------------ copies and pickles
    def __reduce__(self) -> tuple[Any, ...]:
        """The class and the config as plain data (``NoiseConfig.to_dict``), plus a custom ``loss_closure`` and
        the ``check_finite`` switch when they differ from the defaults."""
        state: dict[str, Any] = {}
        if self.loss_closure is not None:
            state["loss_closure"] = self.loss_closure
        if self.check_finite:
            state["check_finite"] = True
        if not state:
            return (type(self), (self.config.to_dict(),))
        return (type(self), (self.config.to_dict(),), state)

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        unknown = sorted(set(state) - {"loss_closure", "check_finite"})
        if unknown:
            raise ValueError(
                f"NoisyRNNCallback: unexpected pickled state {unknown}; expected 'loss_closure' or 'check_finite'"
            )
        self.loss_closure = state.get("loss_closure")
        self.check_finite = check_bool("NoisyRNNCallback.check_finite", state.get("check_finite", False))

    def __copy__(self) -> NoisyRNNCallback:
        return self._detached_copy(lambda value: value)

    def __deepcopy__(self, memo: dict[int, Any]) -> NoisyRNNCallback:
        return self._detached_copy(lambda value: copy.deepcopy(value, memo))

    def _detached_copy(self, copy_value: Any) -> NoisyRNNCallback:
        """A copy with the config, the closure, the level and the noise-stream state, not attached to any fit."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.update(
            config=self.config,
            loss_closure=self.loss_closure,
            _module=None,
            _registered_here=False,
            _wrapped_step=False,
            _previous_step=None,
            _watch=None,
            _source_states=copy_value(self._current_source_states()),
            _pending=copy_value(self._pending),
        )
        return new

    @property
    def active(self) -> bool:
        """True when the config has noise to inject or to regularize with (``enabled`` and a level > 0)."""
        return self.config.has_noise

    # ------------------------------------------------------------------ lifecycle
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or not self.active:
            return
        self._module = pl_module
        if is_noisy(pl_module):
            self._registered_here = False
        else:
            register_noise(pl_module, self.config)
            self._registered_here = True
        self._load_sources(self._source_states)
        if self.config.uses_regularizer:
            self._wrap_training_step(pl_module)
        if self.check_finite:
            self._watch = FiniteWatch(pl_module, lambda: f"global step {trainer.global_step}")
        self._apply_pending()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._release(pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._release(pl_module)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._apply_pending()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._module is None:
            return
        schedule = self.config.schedule
        progress = trainer.global_step if schedule.interval == "step" else trainer.current_epoch
        self.level = schedule.factor(progress)
        set_noise_level(pl_module, self.level)
        size = batch_size(batch)
        pl_module.log(LEVEL_METRIC, self.level, on_step=True, on_epoch=False, batch_size=size)
        for name, metric in SIGMA_METRICS.items():
            sigma = getattr(self.config, name) * self.level
            pl_module.log(metric, sigma, on_step=True, on_epoch=False, batch_size=size)

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """Config and noise-stream states of every rank (gathered; call on all ranks, as Lightning does)."""
        if not self.active:
            return {}
        local = self._current_source_states()
        per_rank = _all_gather(local)
        return {
            "version": _STATE_VERSION,
            "config": self.config.to_dict(),
            "sources": dict(enumerate(per_rank)),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        self._pending = state_dict
        self._apply_pending()

    # ------------------------------------------------------------------ internals
    def _release(self, pl_module: LightningModule) -> None:
        if self._module is None:
            return
        self._source_states = self._current_source_states()
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._wrapped_step:
            if self._previous_step is None:
                pl_module.__dict__.pop("training_step", None)
            else:
                pl_module.training_step = self._previous_step  # type: ignore[method-assign]
            self._previous_step = None
            self._wrapped_step = False
        if self._registered_here:
            remove_noise(pl_module)
        else:
            set_noise_level(pl_module, 1.0)
        self._registered_here = False
        self._module = None

    def _current_source_states(self) -> dict[str, dict[str, Any]]:
        if self._module is None:
            return dict(self._source_states)
        return {name: runtime.source.state_dict() for name, runtime in noise_runtimes(self._module)}

    def _load_sources(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        if self._module is None or not states:
            return
        for name, runtime in noise_runtimes(self._module):
            if name in states:
                runtime.source.load_state_dict(_usable_generators(name, states[name]))

    def _apply_pending(self) -> None:
        if self._pending is None:
            return
        state = self._pending
        stored = state.get("config")
        if stored is not None and stored != self.config.to_dict():
            warnings.warn(
                "NoisyRNNCallback: the checkpoint was written with a different noise config; resuming with the "
                f"callback's config {self.config.to_dict()} (checkpoint: {stored})",
                UserWarning,
                stacklevel=2,
            )
        sources = state.get("sources", {})
        rank = distributed_rank()
        mine = sources.get(rank)
        if mine is None:
            warnings.warn(
                f"NoisyRNNCallback: the checkpoint holds noise streams for ranks {sorted(sources)} but this is "
                f"rank {rank}; its noise streams start fresh from the seed",
                UserWarning,
                stacklevel=2,
            )
            mine = {}
        if self._module is None:
            self._source_states = dict(mine)  # applied when fit registers the noise
        else:
            self._load_sources(mine)
        self._pending = None

    def _wrap_training_step(self, pl_module: LightningModule) -> None:
        self._previous_step = pl_module.__dict__.get("training_step")
        original = pl_module.training_step
        closure_fn = self.loss_closure or _family_closure(pl_module) or default_loss_closure
        config = self.config

        def training_step(batch: Any, batch_idx: int, *args: Any, **kwargs: Any) -> Any:
            rng = StepRng(pl_module)
            output = original(batch, batch_idx, *args, **kwargs)
            loss = loss_of(output)
            with rng.replayed():
                total, reg = regularized_loss(
                    pl_module, lambda: closure_fn(pl_module, batch, batch_idx), loss=loss, config=config
                )
            reg_value = reg.detach() if isinstance(reg, Tensor) else torch.tensor(float(reg))
            pl_module.log(REG_METRIC, reg_value, on_step=True, on_epoch=True, batch_size=batch_size(batch))
            return with_loss(output, total)

        training_step.__wrapped__ = original  # type: ignore[attr-defined]
        pl_module.training_step = training_step  # type: ignore[method-assign]
        self._wrapped_step = True


# ---------------------------------------------------------------------------------------------- helpers


def _coerce_config(config: NoiseConfig | Mapping[str, Any] | None, use_env: bool) -> NoiseConfig:
    if config is None:
        return NoiseConfig.from_env()
    if isinstance(config, Mapping):
        config = NoiseConfig.from_dict(config)
    if not isinstance(config, NoiseConfig):
        raise TypeError(
            "NoisyRNNCallback: config must be a NoiseConfig, a mapping of its fields or None, got "
            f"{type(config).__name__}"
        )
    return NoiseConfig.from_env(base=config) if use_env else config


def _family_closure(module: LightningModule) -> LossClosure | None:
    """The loss closure a plugin provides for ``module``'s model family (``nrnn_loss_closure`` hook), if any."""
    answer, plugin = first_result("nrnn_loss_closure", module=module)
    if answer is not None and not callable(answer):
        raise PluginError(
            f"plugin {plugin!r} answered nrnn_loss_closure with {type(answer).__name__}, expected a callable"
        )
    return answer


def _usable_generators(name: str, state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` without the generator states of devices this process cannot use (a GPU run resumed on CPU)."""
    generators = dict(state.get("generators", {}))
    unusable = [key for key in generators if torch.device(key).type == "cuda" and not torch.cuda.is_available()]
    if unusable:
        warnings.warn(
            f"NoisyRNNCallback: the noise streams of module {name!r} on {unusable} cannot be restored here (no such "
            "device); they start fresh from the seed",
            UserWarning,
            stacklevel=3,
        )
    return {**state, "generators": {k: v for k, v in generators.items() if k not in unusable}}


def _all_gather(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]``; ``[obj]`` outside a distributed job."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
