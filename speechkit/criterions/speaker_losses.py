"""Shared parts of the speaker-verification criterions (voxceleb_trainer's ``SpeakerNet`` + loss).

The losses themselves live in two files:

* :mod:`speechkit.criterions.speaker_classification`: ``softmax``, ``am_softmax``,
  ``aam_softmax`` (one logit per training speaker, every utterance classified on its own);
* :mod:`speechkit.criterions.speaker_metric_learning`: ``angle_proto``, ``ge2e``, ``proto``,
  ``triplet``, ``softmax_proto`` (speakers of the batch compared with each other).

The former (voxceleb_trainer) names ``amsoftmax``, ``aamsoftmax``, ``angleproto`` and
``softmaxproto`` remain registered as aliases.

Each loss is a *head*, an ``nn.Module`` on embeddings, and a registered criterion that runs the
model on the batch and applies the head. A speaker-verification batch is
``{"audio": (B, M, L) float, "label": (B,) long}``: B speakers, M utterances of each
(voxceleb_trainer's ``nPerSpeaker``), L samples. The criterion embeds all ``B * M`` utterances
with one model call (the model maps ``(N, L)`` to ``(N, D)``) and returns the mean loss of the
batch with ``sample_size = 1``.

Checkpoint keys: the criterion's ``state_dict`` holds the head's parameters under exactly the
names voxceleb_trainer saves under ``__L__.`` (``fc.weight``, ``W``, ``weight``, ``w``, ``b``,
``softmax.fc.weight`` ...), so a reference checkpoint's loss weights load into the criterion
after stripping ``__L__.``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from speechkit.criterions.base import Criterion
from speechkit.errors import ConfigError, DataError
from speechkit.metrics.verification import compute_eer


class LossOutput(NamedTuple):
    """What a loss head returns.

    Attributes:
        loss: scalar tensor, the mean loss over the head's rows.
        correct: 0-dim long tensor, rows whose top-1 logit is the target (``None`` for triplet).
        total: number of classified rows (0 for triplet).
        logits: the ``(rows, classes)`` logits the cross-entropy was taken on (``None`` for
            triplet), still attached to the graph; for inspection and tests.
        eer: triplet only: EER (%) separating positive from negative pair distances.
    """

    loss: torch.Tensor
    correct: torch.Tensor | None = None
    total: int = 0
    logits: torch.Tensor | None = None
    eer: float | None = None


def classification_output(logits: torch.Tensor, target: torch.Tensor) -> LossOutput:
    """Cross-entropy and top-1 count of ``logits`` (N, C) against ``target`` (N,) class indices."""
    loss = nn.functional.cross_entropy(logits, target)
    correct = (logits.detach().argmax(dim=1) == target).sum()
    return LossOutput(loss, correct, int(target.numel()), logits)


def require_utterances(loss_name: str, m: int, minimum: int = 1, exact: int | None = None) -> None:
    """Check M, the number of utterances per speaker, before any computation.

    Args:
        loss_name: the loss's registry name, for the message.
        m: utterances per speaker in the batch (``sample["audio"].shape[1]``).
        minimum: the smallest M the loss accepts.
        exact: if given, the only M the loss accepts.

    Raises:
        ConfigError: naming the loss, M and the ``task.n_per_speaker`` setting that fixes it.
    """
    if exact is not None and m != exact:
        raise ConfigError(
            f"{loss_name} needs nPerSpeaker == {exact} utterances per speaker in a batch, "
            f"got M={m}; set task.n_per_speaker={exact}"
        )
    if m < minimum:
        raise ConfigError(
            f"{loss_name} needs nPerSpeaker >= {minimum} utterances per speaker in a batch, "
            f"got M={m}; set task.n_per_speaker={minimum}"
        )


def resolve_size(value: int | None, task: Any, attr: str, loss_name: str, meaning: str) -> int:
    """Return ``value`` if set, else ``task.<attr>``.

    Raises:
        ConfigError: when neither gives a positive integer; the message names the field to set.
    """
    source = f"criterion.{attr}"
    if value is None and task is not None:
        value = getattr(task, attr, None)
        source = f"task.{attr}"
    if value is None:
        raise ConfigError(
            f"criterion '{loss_name}' needs {attr} ({meaning}); set criterion.{attr}=N "
            f"or use a task that provides {attr}"
        )
    if int(value) <= 0:
        raise ConfigError(f"criterion '{loss_name}': {source} must be positive, got {value}")
    return int(value)


def check_classes(
    loss_name: str, embeddings: torch.Tensor, label: torch.Tensor, embed_dim: int, num_classes: int
) -> None:
    """Check embeddings (B, M, D) against ``embed_dim`` and labels (B,) against ``num_classes``.

    Raises:
        ConfigError: D differs from ``embed_dim``.
        DataError: a label outside [0, num_classes).
    """
    if embeddings.shape[-1] != embed_dim:
        raise ConfigError(
            f"criterion '{loss_name}': the model gives {embeddings.shape[-1]}-dim embeddings but "
            f"embed_dim={embed_dim}"
        )
    if label.numel() and (int(label.min()) < 0 or int(label.max()) >= num_classes):
        raise DataError(
            f"criterion '{loss_name}': speaker labels must lie in [0, {num_classes}) "
            f"(num_classes), got labels from {int(label.min())} to {int(label.max())}"
        )


def equal_error_rate(scores: np.ndarray, labels: np.ndarray) -> float:
    """EER (%) of ``scores`` (N,) for binary ``labels`` (N,), 1 = target (same speaker).

    ``speechkit.metrics.verification.compute_eer`` over every ROC point
    (``drop_intermediate=False``); used by the triplet loss to report its batch EER.

    Raises:
        DataError: if there are no targets or no non-targets.
    """
    labels = np.asarray(labels).astype(np.int64)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == len(labels):
        raise DataError(f"EER needs targets and non-targets, got {n_pos} and {len(labels) - n_pos}")
    return compute_eer(np.asarray(scores, dtype=np.float64), labels, drop_intermediate=False)[0]


class SpeakerCriterion(Criterion):
    """Base of the speaker-verification criterions: batch checks, embedding, logging.

    Subclasses build ``self.head`` (a loss head) in ``__init__`` and implement
    :meth:`compute_loss`. The ``head.`` level is hidden in ``state_dict`` and
    ``load_state_dict`` (both also accept the ``head.``-prefixed names), so the keys are the
    reference's ``__L__.*`` names without the prefix.

    ``forward(model, sample)``:

    * ``sample["audio"]``: (B, M, L) float waveforms, B speakers x M utterances x L samples.
    * ``sample["label"]``: (B,) long speaker indices.
    * returns ``(loss, 1, logging_output)``; ``loss`` is the batch mean. ``logging_output`` has
      ``loss``, ``sample_size``, ``nsentences`` (B*M) and the loss's own top-1 ``correct`` /
      ``total`` (triplet: ``eer`` instead, see :class:`TripletCriterion`).

    The head runs in float32 with autocast disabled (margins and cosines near +-1 are not
    representable in float16).

    Raises:
        DataError: a sample without ``audio`` (B, M, L) / ``label`` (B,).
        ConfigError: the wrong number of utterances per speaker for the loss (checked before the
            model runs), or a model output that is not (B*M, D).
    """

    head: nn.Module
    #: logging keys reported as the mean over calls instead of the sum
    averaged_keys: tuple[str, ...] = ()

    def __init__(self, cfg: Any, task: Any = None):
        super().__init__(cfg, task)
        self.register_state_dict_post_hook(_drop_head_prefix)
        self.register_load_state_dict_pre_hook(_add_head_prefix)

    @property
    def loss_name(self) -> str:
        """The registry name (``aamsoftmax`` ...)."""
        return getattr(type(self), "__speechkit_name__", type(self).__name__)

    @property
    def test_normalize(self) -> bool:
        """Whether embeddings are L2-normalised before scoring (voxceleb_trainer's flag)."""
        return bool(self.head.test_normalize)

    def check_utterances_per_speaker(self, m: int) -> None:
        """Raise ``ConfigError`` if the loss cannot use M utterances per speaker (default: any)."""
        require_utterances(self.loss_name, m)

    def compute_loss(self, embeddings: torch.Tensor, label: torch.Tensor) -> LossOutput:
        """Apply the head to ``embeddings`` (B, M, D) float32 with ``label`` (B,)."""
        raise NotImplementedError

    def forward(self, model: nn.Module, sample: dict) -> tuple[torch.Tensor, int, dict]:
        audio, label = _check_sample(sample)
        b, m, length = audio.shape
        self.check_utterances_per_speaker(m)
        embeddings = model(audio.reshape(b * m, length))
        if not torch.is_tensor(embeddings) or embeddings.dim() != 2 or embeddings.shape[0] != b * m:
            shape = tuple(embeddings.shape) if torch.is_tensor(embeddings) else type(embeddings)
            raise ConfigError(
                f"criterion '{self.loss_name}' needs a model returning (N, D) embeddings for "
                f"N={b * m} utterances, got {shape}"
            )
        embeddings = embeddings.reshape(b, m, -1)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            out = self.compute_loss(embeddings.float(), label)
        logging_output = {
            "loss": float(out.loss.detach()),
            "sample_size": 1,
            "nsentences": b * m,
        }
        if out.eer is not None:
            logging_output["eer"] = float(out.eer)
        else:
            logging_output["correct"] = int(out.correct)
            logging_output["total"] = int(out.total)
        logging_output.update(self.extra_logging())
        return out.loss, 1, logging_output

    def extra_logging(self) -> dict[str, float]:
        """Further per-call logging values (e.g. the current AAM margin); none by default."""
        return {}

    @classmethod
    def reduce_metrics(cls, sums: dict[str, float]) -> dict[str, float]:
        """The base rule, plus ``averaged_keys`` divided by the number of calls summed."""
        out = Criterion.reduce_metrics(sums)
        calls = max(sums.get("sample_size", 0.0), 1e-12)
        for key in cls.averaged_keys:
            if key in sums:
                out[key] = sums[key] / calls
        return out


def _check_sample(sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(audio (B, M, L), label (B,))`` or raise ``DataError``."""
    if not isinstance(sample, dict) or "audio" not in sample or "label" not in sample:
        keys = sorted(sample) if isinstance(sample, dict) else type(sample).__name__
        raise DataError(
            f"a speaker-verification sample needs 'audio' (B, M, L) and 'label' (B,), got {keys}"
        )
    audio, label = sample["audio"], sample["label"]
    if audio.dim() != 3:
        raise DataError(
            f"sample['audio'] must be (B speakers, M utterances, L samples), got shape "
            f"{tuple(audio.shape)}"
        )
    if label.dim() != 1 or label.shape[0] != audio.shape[0]:
        raise DataError(
            f"sample['label'] must be (B,) = ({audio.shape[0]},), got shape {tuple(label.shape)}"
        )
    return audio, label


def _drop_head_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any):
    """state_dict post-hook: ``<prefix>head.<name>`` -> ``<prefix><name>``."""
    head_prefix = prefix + "head."
    for key in [k for k in state_dict if k.startswith(head_prefix)]:
        state_dict[prefix + key[len(head_prefix) :]] = state_dict.pop(key)


def _add_head_prefix(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """load_state_dict pre-hook: ``<prefix><name>`` -> ``<prefix>head.<name>``."""
    head_prefix = prefix + "head."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(head_prefix)]:
        state_dict[head_prefix + key[len(prefix) :]] = state_dict.pop(key)
