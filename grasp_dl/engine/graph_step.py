"""Training steps the GPU runs without the host: one mini-batch's forward, backward and optimiser
step captured once in a CUDA graph and replayed for every mini-batch of the same shape.

On a GPU a step of the default network costs the same ~3.7 ms at batch 256 and at 4096 (issue
#17): the device waits on kernel launches, Python and the optimiser's per-parameter work.
:class:`GraphStep` records that work once and replays it with one launch per mini-batch.

How a step stays what eager training would have done
----------------------------------------------------
* **Same mini-batches, same order.** Each mini-batch is copied into fixed-size input buffers
  and the graph is replayed. A mini-batch of another size (the epoch's ragged last one) is
  neither padded (that would change batch-norm statistics and the mean loss) nor dropped: it
  runs the same step eagerly. So are the first ``warmup`` mini-batches of a fit.
* **Batch norm and dropout.** Training-mode batch norm updates its running statistics in place
  (captured); dropout and VaDE's draws use the default CUDA generator, which PyTorch advances
  on every replay, so each step gets fresh draws.
* **What the step reads from the host is frozen at capture**, so the graph is captured afresh
  whenever that changes: the epoch (VaDE's KL weight, the learning rate of an epoch scheduler),
  the train/eval mode of any submodule, the optimiser's settings, autocast. Tensors the module
  holds (buffers and tensor attributes) are checked before every replay: one reassigned with the
  same shape (DEC's target refreshed every ``update_interval`` steps) is copied into the
  captured tensor, which is bound back in its place (no new capture); any other change means a
  new capture.
* **Lightning counts every step** (``global_step``, ``max_steps``, DEC's ``update_interval``)
  through public API: each replay runs as the closure of the ``LightningOptimizer``'s
  ``step(closure)``. The replay has already updated the weights and clears the gradients, so the
  wrapped optimiser's own step finds no gradient and changes nothing.
* **Logged means.** ``log_epoch_mean`` calls of ``batch_loss`` are collected into sums on the
  device inside the step (captured too) and handed to the module once per block.

A step can be captured only where Lightning would add nothing to it: one device, no loss scaling,
no hook around backward or the optimiser step, an optimiser that can run on
the device (``capturable``: Adam, AdamW, ...) (see :func:`graph_obstacles`), no ``torch.compile``.
Should a capture still fail, the fit goes on with eager steps and says so once.

Where it pays is a measurement (``scripts/benchmark_speed.py --graphs``): the setting ``graphs``
is ``auto`` (on where :func:`graphs_pay` says so), ``true`` or ``false``. ``mode='static'`` runs
the very step that would be captured, with its fixed-size buffers, rebinding and logging, but
eagerly: on a CPU it is the equivalence test of the graph path against plain training.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from grasp_dl.runtime.errors import ConfigError

#: Values of the ``graphs`` setting (conf/train.yaml).
GRAPH_SETTINGS = ("auto", "true", "false")
#: Module attribute holding the setting (``use_graphs``); absent means ``auto``.
SETTING_ATTR = "_graphs_setting"
#: Hooks that would see a step of a captured graph differently from an eager one.
CALLBACK_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
MODULE_HOOKS = (*CALLBACK_HOOKS, "backward", "optimizer_step", "optimizer_zero_grad")
#: Tensor methods that wait for the device (not allowed inside a captured step).
HOST_SYNCS = frozenset(
    {"item", "tolist", "__int__", "__float__", "__bool__", "__index__", "nonzero", "unique", "masked_select", "numpy"}
)
#: Whether graphs pay on a CUDA device when ``graphs=auto``. Off until measured on a GPU:
#: ``scripts/gpu_check.sh`` runs ``scripts/benchmark_speed.py --graphs``; set it True when (a)
#: with graphs beats (a) without at batch 256 and 4096, in 32-true and in bf16-mixed.
GRAPHS_PAY_ON_CUDA = False


def _setting(value: Any) -> str:
    """The ``graphs`` setting as one of GRAPH_SETTINGS (YAML may give a bool)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).lower()
    if text not in (*GRAPH_SETTINGS, "static"):
        raise ConfigError(f"graphs={value!r} is not a setting: choose auto, true or false")
    return text


def use_graphs(module: L.LightningModule, setting: Any, *, compiled: bool = False) -> None:
    """Set whether ``module``'s training steps are captured in CUDA graphs (read at the start of fit).

    Parameters
    ----------
    module : lightning.LightningModule
        A block-training module (:class:`~grasp_dl.engine.block_training.BlockTraining`).
    setting : {'auto', 'true', 'false', 'static'} or bool
        ``auto``: where :func:`graphs_pay` and nothing in :func:`graph_obstacles` stands against it;
        ``true``: always (a ConfigError names what prevents it); ``false``: never; ``static``: the
        step that would be captured, run eagerly (for tests and debugging, on any device).
    compiled : bool
        Whether the module's network is ``torch.compile``-d (``compile=true``): then ``auto`` is off.

    Raises
    ------
    ConfigError
        For a setting that is none of these, or ``true`` with ``compiled``.
    """
    setting = _setting(setting)
    if compiled and setting in ("true", "static"):
        raise ConfigError("compile=true and graphs=true cannot be combined: choose one (e.g. graphs=false)")
    setattr(module, SETTING_ATTR, "false" if compiled else setting)


def graphs_pay(device: torch.device) -> bool:
    """Whether ``graphs=auto`` captures training steps on ``device``.

    Parameters
    ----------
    device : torch.device
        The module's device.

    Returns
    -------
    bool
        False on a CPU (CUDA graphs need a GPU); on a CUDA device, :data:`GRAPHS_PAY_ON_CUDA`.
    """
    return device.type == "cuda" and GRAPHS_PAY_ON_CUDA


def _capturable_optimizer(optimizer: torch.optim.Optimizer) -> bool:
    return all("capturable" in group or group.get("fused") for group in optimizer.param_groups)


def graph_obstacles(module: L.LightningModule, trainer: L.Trainer, *, need_cuda: bool = True) -> list[str]:
    """What keeps this fit's training step from being captured (empty when nothing does).

    Parameters
    ----------
    module : lightning.LightningModule
        The module being trained.
    trainer : lightning.Trainer
        Its trainer, set up (optimisers configured).
    need_cuda : bool
        Count a device that is not CUDA as an obstacle.

    Returns
    -------
    list of str
        One phrase per obstacle, naming the setting that causes it.
    """
    reasons = []
    if need_cuda and module.device.type != "cuda":
        reasons.append(f"CUDA graphs need a GPU and this run trains on {module.device.type}")
    if type(trainer.strategy) is not SingleDeviceStrategy:
        reasons.append(f"more than one device ({type(trainer.strategy).__name__})")
    plugin = trainer.precision_plugin
    if not (type(plugin) is Precision or (type(plugin) is MixedPrecision and plugin.scaler is None)):
        reasons.append(f"trainer.precision={trainer.precision} (loss scaling or a precision plugin)")
    hooked = [
        f"{type(c).__name__}.{hook}"
        for c in trainer.callbacks
        for hook in CALLBACK_HOOKS
        if is_overridden(hook, c, L.Callback)
    ]
    hooked += [
        f"{type(module).__name__}.{hook}" for hook in MODULE_HOOKS if is_overridden(hook, module, L.LightningModule)
    ]
    if hooked:
        reasons.append(f"hooks around backward or the optimiser step ({', '.join(hooked)})")
    optimizers = trainer.optimizers
    if len(optimizers) != 1:
        reasons.append(f"{len(optimizers)} optimisers (one is captured)")
    elif not _capturable_optimizer(optimizers[0]):
        reasons.append(f"{type(optimizers[0]).__name__} cannot step on the device (use Adam or AdamW)")
    if not hasattr(module, "batch_loss"):
        reasons.append(f"{type(module).__name__} has no batch_loss")
    return reasons


def graph_step_for(module: L.LightningModule, trainer: L.Trainer) -> GraphStep | None:
    """The :class:`GraphStep` of this fit, or None when steps stay eager (called at the start of fit).

    Parameters
    ----------
    module : lightning.LightningModule
        The module being trained (its setting from :func:`use_graphs`; ``auto`` if never set).
    trainer : lightning.Trainer
        Its trainer.

    Returns
    -------
    GraphStep or None

    Raises
    ------
    ConfigError
        With ``graphs=true`` (or ``static``) when something in :func:`graph_obstacles` prevents it.
    """
    setting = getattr(module, SETTING_ATTR, "auto")
    if setting == "false" or not trainer.optimizers:  # off, or nothing trains by gradient (model=xd)
        return None
    if setting == "auto" and not graphs_pay(module.device):
        return None
    static = setting == "static"
    reasons = graph_obstacles(module, trainer, need_cuda=not static)
    if reasons and setting == "auto":
        return None
    if reasons:
        raise ConfigError(
            f"graphs={setting} cannot capture the training step: {'; '.join(reasons)}. "
            "Set graphs=auto (captured where it pays) or graphs=false"
        )
    return GraphStep(module, trainer.optimizers[0], capture=not static)


class HostSyncs(TorchFunctionMode):
    """Record the tensor operations that wait for the device (:data:`HOST_SYNCS`) while active.

    A captured step may not contain any; on a CPU this finds them before a GPU does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        """Note ``func`` if it synchronises, then run it."""
        name = getattr(func, "__name__", "")
        if name in HOST_SYNCS:
            self.found.append(name)
        elif name in ("__getitem__", "__setitem__") and _has_mask(args[1] if len(args) > 1 else None):
            self.found.append(f"{name} with a boolean mask")
        elif name == "where" and len(args) + len(kwargs or {}) == 1:
            self.found.append("where with one argument")
        return func(*args, **(kwargs or {}))


def _has_mask(index: Any) -> bool:
    """Whether an index holds a boolean tensor (its result's size depends on the values)."""
    parts = index if isinstance(index, tuple | list) else (index,)
    return any(isinstance(part, Tensor) and part.dtype == torch.bool for part in parts)


def host_syncs(fn: Callable[[], Any]) -> list[str]:
    """The host-synchronising tensor operations ``fn()`` runs (empty: it can be captured).

    Parameters
    ----------
    fn : callable
        Called once with no arguments.

    Returns
    -------
    list of str
        Names of the operations, in order.
    """
    with HostSyncs() as mode:
        fn()
    return mode.found


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Let ``optimizer`` step on the device (``capturable``), saving and loading as configured.

    Step counters already made are moved to the device. A state-dict hook writes the configured
    ``capturable`` into checkpoints, with the step counters back on the CPU where it was off, so
    the checkpoint is the one a run without graphs writes (and loads on a CPU or without graphs).

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        An optimiser whose param groups have a ``capturable`` option (or are ``fused``).
    device : torch.device
        The parameters' device.
    """
    configured = [group.get("capturable", False) for group in optimizer.param_groups]

    def restore(_optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        for group, value in zip(state_dict["param_groups"], configured, strict=True):
            if "capturable" not in group:
                continue
            group["capturable"] = value
            for index in group["params"] if not (value or group.get("fused")) else ():
                step = state_dict["state"].get(index, {}).get("step")
                if isinstance(step, Tensor):
                    state_dict["state"][index]["step"] = step.detach().cpu()
        return state_dict

    optimizer.register_state_dict_post_hook(restore)
    # The eager steps (warm-up, ragged batches) and Lightning's step after a replay are meant.
    warnings.filterwarnings(
        "ignore", message="This instance was constructed with capturable=True", category=UserWarning
    )
    for group in optimizer.param_groups:
        if not group.get("fused"):
            group["capturable"] = True
    for state in optimizer.state.values():
        step = state.get("step")
        if isinstance(step, Tensor) and step.device != device:
            state["step"] = step.to(device=device, dtype=torch.float32)


class _Watched:
    """A tensor the module held at capture, where it was bound (a buffer or a plain attribute)."""

    __slots__ = ("owner", "name", "tensor", "is_buffer")

    def __init__(self, owner: nn.Module, name: str, tensor: Tensor, is_buffer: bool) -> None:
        self.owner, self.name, self.tensor, self.is_buffer = owner, name, tensor, is_buffer

    def current(self) -> Any:
        return self.owner._buffers.get(self.name) if self.is_buffer else self.owner.__dict__.get(self.name)


def _held_tensors(module: nn.Module) -> list[_Watched]:
    """Every buffer and plain tensor attribute of ``module`` and its submodules."""
    watched = []
    for owner in module.modules():
        for name, tensor in owner._buffers.items():
            if tensor is not None:
                watched.append(_Watched(owner, name, tensor, True))
        for name, value in owner.__dict__.items():
            if isinstance(value, Tensor) and not isinstance(value, nn.Parameter):
                watched.append(_Watched(owner, name, value, False))
    return watched


class GraphStep:
    """One mini-batch's forward, backward and optimiser step, captured once and replayed.

    Built at the start of fit by :func:`graph_step_for`; ``BlockTraining.training_step`` hands it
    each block (:meth:`run_block`). See the module docstring for what keeps it equal to eager steps.

    Parameters
    ----------
    module : lightning.LightningModule
        The module; its ``batch_loss(batch)``, ``before_batch(batch)`` and ``log_epoch_mean`` are used.
    optimizer : torch.optim.Optimizer
        The module's (unwrapped) optimiser; made :func:`capturable <make_capturable>` when capturing.
    capture : bool
        Capture CUDA graphs (a CUDA device); False runs the same static-shape step eagerly.
    warmup : int
        Mini-batches run eagerly (on the capture stream) before the first capture (at least 1).

    Attributes
    ----------
    captures : int
        Graphs captured so far (in ``capture=False``: times one would have been).
    replays : int
        Mini-batches run by the (captured or static) step.
    eager_steps : int
        Mini-batches run eagerly (warm-up, and batches of another size).
    rebinds : int
        Reassigned tensors copied into the captured ones (e.g. DEC's target refreshes).
    failed : str or None
        Why a capture failed (the fit then went on with eager steps); None while none did.
    """

    def __init__(
        self, module: L.LightningModule, optimizer: torch.optim.Optimizer, *, capture: bool, warmup: int = 2
    ) -> None:
        self.module = module
        self.optimizer = optimizer
        self.capture = capture
        # At least one eager step: the optimiser's state must exist before a capture, or the
        # graph would allocate (and zero) it at every replay.
        self.warmup = max(1, int(warmup))
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self._modules = list(module.modules())
        self.captures = self.replays = self.eager_steps = self.rebinds = 0
        self.failed: str | None = None
        self._rows: int | None = None
        self._key: tuple[Any, ...] | None = None
        self._graph: Any = None
        self._static: tuple[Tensor, Tensor] | None = None
        self._static_loss: Tensor | None = None
        self._watched: list[_Watched] = []
        self._graph_names: list[str] = []
        # Sums on the device of the block's loss and logged values (star-weighted), and their stars.
        self._sums: dict[str, Tensor] = {}
        self._stars: dict[str, int] = {}
        self._prog_bar: set[str] = set()
        self._collecting: dict[str, Tensor] | None = None
        self._stream = None
        self._pool = None
        if capture:
            make_capturable(optimizer, module.device)
            self._stream = torch.cuda.Stream(module.device)
            self._pool = torch.cuda.graph_pool_handle()

    # ------------------------------------------------------------------ the block
    def run_block(self, batches: Sequence[tuple[Tensor, Tensor]], optimizer: Any) -> Tensor | None:
        """Train on each mini-batch of a block in turn, as ``BlockTraining.training_step`` does.

        Parameters
        ----------
        batches : sequence of (features, rows)
            The block's mini-batches.
        optimizer : lightning.pytorch.core.optimizer.LightningOptimizer
            The module's optimiser as ``self.optimizers()`` gives it (it counts the steps).

        Returns
        -------
        Tensor or None
            The star-weighted mean loss of the steps taken; None when none was taken.
        """
        stars = 0
        for batch in batches:
            if not self.module.before_batch(batch):
                break
            self.step(batch, optimizer)
            stars += len(batch[0])
        return self.flush(stars)

    def step(self, batch: tuple[Tensor, Tensor], optimizer: Any) -> None:
        """One optimiser step on ``batch``: replayed when it has the captured shape, else eager.

        Parameters
        ----------
        batch : (features, rows)
            A mini-batch.
        optimizer : LightningOptimizer
            The module's wrapped optimiser (its ``step(closure)`` counts the step).
        """
        x, index = batch
        if self._rows is None:
            self._rows = len(x)
        if len(x) != self._rows or self.eager_steps < self.warmup:
            optimizer.step(closure=lambda: self._eager(x, index))
            return
        if self.failed is not None:
            optimizer.step(closure=lambda: self._eager(x, index))
            return
        key = self._graph_key(x, index)
        if key != self._key or not self._rebind():
            try:
                self._prepare(x, index, key)
            except RuntimeError as error:  # a step that cannot be captured: train on eagerly
                self.failed = f"{type(error).__name__}: {error}"
                self._graph, self._key = None, None
                rank_zero_warn(f"graphs: the training step could not be captured, training on eagerly ({self.failed})")
                optimizer.step(closure=lambda: self._eager(x, index))
                return
        self._static[0].copy_(x)
        self._static[1].copy_(index)
        optimizer.step(closure=self._replay)

    def flush(self, stars: int) -> Tensor | None:
        """Hand the block's logged sums to ``log_epoch_mean`` and return its mean loss.

        Parameters
        ----------
        stars : int
            Stars trained on in the block.

        Returns
        -------
        Tensor or None
            The star-weighted mean loss; None when no step was taken.
        """
        loss = None
        for name, total in self._sums.items():
            n = self._stars.get(name, 0)
            if n == 0:
                continue
            mean = total / n
            if name == "":
                loss = mean
            else:
                self.module.log_epoch_mean(name, mean, n, prog_bar=name in self._prog_bar)
            total.zero_()
            self._stars[name] = 0
        return loss if stars else None

    # ------------------------------------------------------------------ the step itself
    @contextlib.contextmanager
    def _collected_logs(self) -> Iterator[dict[str, Tensor]]:
        """Route the module's ``log_epoch_mean`` calls into a dict for the duration."""
        logged: dict[str, Tensor] = {}
        module = self.module

        def collect(name: str, value: Tensor, batch_size: int, prog_bar: bool = False) -> None:
            logged[name] = value.detach()
            if prog_bar:
                self._prog_bar.add(name)

        module.__dict__["log_epoch_mean"] = collect
        try:
            yield logged
        finally:
            del module.__dict__["log_epoch_mean"]

    def _step(self, x: Tensor, index: Tensor) -> tuple[Tensor, list[str]]:
        """Forward, backward, the optimiser's update and the logged sums: what a graph captures.

        Returns the detached loss and the names of what was accumulated.
        """
        self.optimizer.zero_grad(set_to_none=True)
        with self._collected_logs() as logged:
            loss = self.module.batch_loss((x, index))
        loss.backward()
        self.optimizer.step()
        self._accumulate({"": loss.detach(), **logged}, len(x))
        return loss.detach(), ["", *logged]

    def _accumulate(self, values: dict[str, Tensor], n: int) -> None:
        with torch.no_grad():
            for name, value in values.items():
                if name not in self._sums:
                    if self._collecting is not None:  # a name first seen inside a capture
                        self._collecting[name] = value
                        continue
                    self._sums[name] = torch.zeros((), device=value.device)
                    self._stars[name] = 0
                self._sums[name].add_(value.float() * n)

    def _count(self, names: list[str], n: int) -> None:
        for name in names:
            self._stars[name] = self._stars.get(name, 0) + n

    def _eager(self, x: Tensor, index: Tensor) -> Tensor:
        """The closure of an eager step: forward and backward (the wrapped optimiser then updates)."""
        self.eager_steps += 1
        stream = self._stream if self.captures == 0 else None
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            if stream is not None:
                stream.wait_stream(torch.cuda.current_stream(self.module.device))
            self.optimizer.zero_grad(set_to_none=True)
            with self._collected_logs() as logged:
                loss = self.module.batch_loss((x, index))
            loss.backward()
            self._accumulate({"": loss.detach(), **logged}, len(x))
        if stream is not None:
            torch.cuda.current_stream(self.module.device).wait_stream(stream)
        self._count(["", *logged], len(x))
        return loss

    def _replay(self) -> Tensor:
        """The closure of a replayed step: the whole step; the wrapped optimiser then finds no gradient."""
        x, index = self._static
        if self.capture:
            self._graph.replay()
            names = self._graph_names
        else:
            self._static_loss, names = self._step(x, index)
        for p in self.params:
            p.grad = None
        self.replays += 1
        self._count(names, len(x))
        return self._static_loss

    # ------------------------------------------------------------------ capture
    def _graph_key(self, x: Tensor, index: Tensor) -> tuple[Any, ...]:
        """What a captured step depends on besides the tensors it reads."""
        device = x.device.type
        autocast = torch.is_autocast_enabled(device) and str(torch.get_autocast_dtype(device))
        hyper = tuple(
            tuple(
                (k, v)
                for k, v in sorted(group.items())
                if k != "params" and isinstance(v, int | float | bool | str | tuple)
            )
            for group in self.optimizer.param_groups
        )
        modes = tuple(m.training for m in self._modules)
        return (tuple(x.shape), x.dtype, index.dtype, self.module.current_epoch, modes, hyper, autocast)

    def _rebind(self) -> bool:
        """Copy reassigned tensors into the captured ones; False when one cannot be (capture again)."""
        for watched in self._watched:
            value = watched.current()
            if value is watched.tensor:
                continue
            old = watched.tensor
            if not (isinstance(value, Tensor) and value.shape == old.shape and value.dtype == old.dtype):
                return False
            if value.device != old.device:
                return False
            with torch.no_grad():
                old.copy_(value)
            setattr(watched.owner, watched.name, old)
            self.rebinds += 1
        return True

    def _prepare(self, x: Tensor, index: Tensor, key: tuple[Any, ...]) -> None:
        """New static input buffers and (on a GPU) a new graph, for the current key and tensors."""
        self._graph = None
        self._static = (x.clone(), index.clone())
        self._key = key
        self.captures += 1
        if self.capture:
            self._capture()
        self._watched = _held_tensors(self.module)

    def _capture(self) -> None:
        """Record :meth:`_step` on the static buffers (nothing runs until the first replay)."""
        device = self.module.device
        graph = torch.cuda.CUDAGraph()
        self._collecting = {}
        self.optimizer.zero_grad(set_to_none=True)
        self._stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(self._stream):
            graph.capture_begin(pool=self._pool)
            try:
                self._static_loss, self._graph_names = self._step(*self._static)
            except BaseException:
                self._collecting = None
                with contextlib.suppress(RuntimeError):  # the capture is invalid: end it, keep the first error
                    graph.capture_end()
                raise
            graph.capture_end()
        torch.cuda.current_stream(device).wait_stream(self._stream)
        missing, self._collecting = self._collecting, None
        for name, value in missing.items():  # never seen in the eager warm-up: allocate, capture again
            self._sums[name] = torch.zeros((), device=value.device)
            self._stars[name] = 0
        if missing:
            return self._capture()
        self._graph = graph
