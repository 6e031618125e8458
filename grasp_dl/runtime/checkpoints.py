"""The one safe way grasp-dl opens a checkpoint: ``weights_only=True`` always, every failure one line.

Every load path (``grasp-dl predict``, resuming with ``ckpt_path``, ``model.pretrained_ckpt``,
:func:`grasp_dl.inference.predict.load_clustering_module`, ``DeepClusteringModel.load``) goes through
:func:`read_checkpoint` and :func:`load_module`. ``torch.load`` is always called with
``weights_only=True`` passed explicitly, so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` cannot turn
unpickling of arbitrary objects back on.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch

from grasp_dl.runtime.capabilities import KeepsFitResults
from grasp_dl.runtime.errors import CheckpointError

#: Checkpoint key of the clustering class that wrote it (written by every ClusteringModule).
CLASS_KEY = "clustering_module"

__all__ = [
    "HASH_KEY",
    "MODEL_KINDS",
    "SaveLastCheckpoint",
    "StateDictHash",
    "check_state_fits",
    "checkpoint_kind",
    "load_module",
    "read_checkpoint",
    "state_dict_sha256",
]

#: Checkpoint key of the sha256 of the weights (:func:`state_dict_sha256`), written by :class:`StateDictHash`.
HASH_KEY = "state_dict_sha256"

#: A parameter only one kind of module has -> the name of that kind, in messages.
MODEL_KINDS: dict[str, str] = {"centers": "DEC", "mixture_means": "VaDE"}
#: The kind of a checkpoint whose state holds a network but no clustering parameter.
AUTOENCODER = "autoencoder"
#: Keys every Lightning checkpoint written by grasp-dl carries.
REQUIRED_KEYS = ("state_dict", "hyper_parameters")

ModuleT = TypeVar("ModuleT", bound=L.LightningModule)


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, shortened: what goes into a one-line error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    telling = [line for line in lines if any(w in line for w in ("size mismatch", "Missing key", "Unexpected key"))]
    text = (telling or lines or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_checkpoint(path: str | Path, *, option: str = "ckpt_path") -> dict[str, Any]:
    """Load a checkpoint file as plain data (tensors and containers only) and check it is grasp-dl's.

    Parameters
    ----------
    path
        The checkpoint file.
    option
        The option that named the file (``ckpt_path``, ``model.pretrained_ckpt``), used in messages.

    Returns
    -------
    dict
        The checkpoint's contents, with at least ``state_dict`` and ``hyper_parameters``.

    Raises
    ------
    CheckpointError
        When the file is missing, empty, truncated, not a PyTorch file, holds Python objects
        other than tensors and plain containers (a pickle payload is refused, never run), or is
        not a Lightning checkpoint written by ``grasp-dl train``.
    """
    path = Path(path)
    if not path.is_file():
        what = "a directory" if path.is_dir() else "not found"
        raise CheckpointError(f"checkpoint {path} {what}: give {option}=<run dir>/checkpoints/last.ckpt")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes): give {option}= a checkpoint written by grasp-dl train"
        )
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path} refused: it is not made of tensors and plain containers only (a damaged file, or "
            "one carrying Python objects, which are never unpickled: weights_only=True); give "
            f"{option}= a checkpoint written by grasp-dl train from a source you trust"
        ) from exc
    except Exception as exc:  # torch's parsers fail on damaged files with many exception types
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {_one_line(exc, 120)}): the file is truncated "
            f"or not a PyTorch checkpoint; give {option}= a complete checkpoint written by grasp-dl train"
        ) from exc
    if not isinstance(content, dict) or not all(key in content for key in REQUIRED_KEYS):
        found = sorted(map(str, content))[:6] if isinstance(content, dict) else type(content).__name__
        raise CheckpointError(
            f"checkpoint {path} is not a Lightning checkpoint written by grasp-dl (it lacks "
            f"{' and '.join(REQUIRED_KEYS)}; found {found}): give {option}= a file written by grasp-dl train"
        )
    if not isinstance(content["state_dict"], dict) or not isinstance(content["hyper_parameters"], dict):
        raise CheckpointError(f"checkpoint {path} has a malformed state_dict or hyper_parameters: re-train the model")
    stored = content.get(HASH_KEY)
    if stored is not None and stored != state_dict_sha256(content["state_dict"]):
        raise CheckpointError(
            f"checkpoint {path} is damaged: its weights do not match the sha256 written with them (a changed or "
            f"corrupted file); give {option}= an intact copy, or re-train the model"
        )
    return content


def state_dict_sha256(state_dict: dict[str, Any]) -> str:
    """The sha256 of a state_dict's tensors: each name, dtype, shape and raw bytes, in name order.

    Parameters
    ----------
    state_dict
        Parameter name -> tensor (other values are hashed by their ``repr``).

    Returns
    -------
    str
        The hex digest.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        value = state_dict[name]
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


class StateDictHash(L.Callback):
    """Write the sha256 of the weights into every checkpoint, so that a corrupted file is refused on load.

    :func:`read_checkpoint` checks it; checkpoints written without it still load.
    """

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Add :data:`HASH_KEY` to the checkpoint being written."""
        checkpoint[HASH_KEY] = state_dict_sha256(checkpoint["state_dict"])


def checkpoint_kind(content: dict[str, Any]) -> str:
    """'DEC', 'VaDE', 'XD', ... or 'autoencoder': which kind of module wrote a checkpoint read by :func:`read_checkpoint`.

    The clustering class a checkpoint names (``clustering_module``, written by every
    :class:`~grasp_dl.models.base.ClusteringModule`) decides; older checkpoints are told apart by a
    parameter only each kind has.
    """
    written_by = content.get(CLASS_KEY)
    if isinstance(written_by, str) and written_by:
        name = written_by.rsplit(".", 1)[-1]
        return name.removesuffix("Module") or name
    state = content.get("state_dict", {})
    return next((kind for key, kind in MODEL_KINDS.items() if key in state), AUTOENCODER)


def load_module(
    module_class: type[ModuleT],
    path: str | Path,
    *,
    kinds: tuple[str, ...],
    option: str = "ckpt_path",
    content: dict[str, Any] | None = None,
) -> ModuleT:
    """Build ``module_class`` from a checkpoint, refusing files of another kind or shape with one line.

    Parameters
    ----------
    module_class
        The LightningModule class to restore (its ``load_from_checkpoint`` is called with
        ``weights_only=True``).
    path
        The checkpoint file.
    kinds
        The checkpoint kinds (:func:`checkpoint_kind`) this class accepts.
    option
        The option that named the file, used in messages.
    content
        The checkpoint already read by :func:`read_checkpoint`, to skip reading it twice for the checks.

    Returns
    -------
    LightningModule
        The restored module, on the CPU.

    Raises
    ------
    CheckpointError
        When :func:`read_checkpoint` refuses the file, when it was written by another kind of
        module, or when its weights or hyper-parameters do not fit ``module_class``.
    """
    content = read_checkpoint(path, option=option) if content is None else content
    kind = checkpoint_kind(content)
    if kind not in kinds:
        wanted = " or ".join(kinds)
        raise CheckpointError(
            f"checkpoint {path} holds {'an' if kind[0] in 'aeiou' else 'a'} {kind} model"
            f"{' (no cluster centres)' if kind == AUTOENCODER else ''}, {option} needs a {wanted} checkpoint: "
            + (
                "give the autoencoder phase's <run dir>/checkpoints/autoencoder/last.ckpt"
                if AUTOENCODER in kinds
                else "train a clustering model first (e.g. grasp-dl train model=dec) and give its last.ckpt"
            )
        )
    try:
        return module_class.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"checkpoint {path} refused: it holds Python objects (weights_only=True)") from exc
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit a {module_class.__name__} ({type(exc).__name__}: {_one_line(exc)}): "
            f"it was written by another version or edited; give {option}= a checkpoint written by grasp-dl train"
        ) from exc


def check_state_fits(module: L.LightningModule, path: str | Path, *, option: str = "ckpt_path") -> None:
    """Refuse, before training resumes, a checkpoint whose weights do not fit the configured module.

    Lightning would stop with a multi-line ``load_state_dict`` error inside ``trainer.fit``;
    this names the first difference in one line (another model kind, another number of groups,
    other network sizes).

    Parameters
    ----------
    module
        The module built from the current config.
    path
        The checkpoint to resume from.
    option
        The option that named the file, used in messages.

    Raises
    ------
    CheckpointError
        When :func:`read_checkpoint` refuses the file, or its state has other parameters or shapes.
    """
    content = read_checkpoint(path, option=option)
    stored = content["state_dict"]
    own = module.state_dict()
    # A clustering module names its class in its checkpoints (it keeps fit_results beside the weights).
    written_by = (
        f"{type(module).__module__}.{type(module).__qualname__}" if isinstance(module, KeepsFitResults) else None
    )
    kind, wanted = checkpoint_kind(content), checkpoint_kind({"state_dict": own, CLASS_KEY: written_by})
    if kind != wanted:
        raise CheckpointError(
            f"{option}={path} holds {'an' if kind[0] in 'aeiou' else 'a'} {kind} model, this run trains "
            f"{'an' if wanted[0] in 'aeiou' else 'a'} {wanted} model: resume with the model= it was trained with"
        )
    missing = sorted(set(own) - set(stored))
    unexpected = sorted(set(stored) - set(own))
    # (a module's extra state, e.g. model=xd's mixture, is no tensor: it has no shape to compare)
    tensors = [k for k in own if k in stored and hasattr(own[k], "shape") and hasattr(stored[k], "shape")]
    shapes = [k for k in tensors if tuple(own[k].shape) != tuple(stored[k].shape)]
    if missing or unexpected or shapes:
        if shapes:
            key = shapes[0]
            detail = f"{key} is {tuple(stored[key].shape)} there and {tuple(own[key].shape)} here"
        else:
            detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(
            f"{option}={path} does not fit the configured model ({detail}): resume with the options it was "
            "trained with (model.n_clusters, network sizes, data.features)"
        )


class SaveLastCheckpoint(L.Callback):
    """Write ``last.ckpt`` at every ``every_n_epochs``-th epoch end and when the run is stopped (SIGTERM, Ctrl-C).

    Lightning's ModelCheckpoint refreshes ``last.ckpt`` only when it saves a monitored checkpoint,
    so a run whose metric stopped improving keeps an old one; a stopped run would lose every
    epoch since. The file is the one ModelCheckpoint (``save_last: true``) keeps as the phase's
    last checkpoint, the ``last.ckpt`` that ``ckpt_path=last`` resumes; before ModelCheckpoint has
    written its first, there is nothing to refresh.

    Parameters
    ----------
    every_n_epochs : int
        Epochs between two writes.
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise CheckpointError(f"every_n_epochs={every_n_epochs!r} is not valid: give a whole number of at least 1")
        self.every_n_epochs = every_n_epochs

    @staticmethod
    def _path(trainer: L.Trainer) -> Path | None:
        """The file ModelCheckpoint keeps as this run's last checkpoint (None until it has written one).

        Its own choice is followed (``last-v1.ckpt`` beside another run's ``last.ckpt``), so a file
        this run did not write is never replaced.
        """
        path = getattr(trainer.checkpoint_callback, "last_model_path", "")
        return Path(path) if path else None

    def _save(self, trainer: L.Trainer) -> None:
        path = self._path(trainer)
        if path is not None and not trainer.sanity_checking:
            trainer.save_checkpoint(path)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write ``last.ckpt`` every ``every_n_epochs`` epochs."""
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Write ``last.ckpt`` when a single-process run is stopped by a signal or by the user (not on a failure)."""
        stopped = isinstance(exception, (SystemExit, KeyboardInterrupt)) or getattr(trainer, "received_sigterm", False)
        # Saving is collective across processes: with several, a stopped peer would leave the others waiting.
        if stopped and trainer.world_size == 1:
            try:
                self._save(trainer)
            except Exception as exc:  # the run is ending anyway: say so, keep the original exit
                import logging

                logging.getLogger(__name__).warning("could not write last.ckpt on the way out: %s", exc)
