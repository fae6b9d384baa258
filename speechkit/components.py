"""The one place that imports every built-in registration (tasks, models, criterions, optim).

``import speechkit`` runs nothing; ``speechkit.train`` and tools that resolve registry names call
``import_all()`` once. Add a new built-in module to the lists below.
"""

from __future__ import annotations

import importlib

BUILTIN_MODULES = [
    "speechkit.optim.optimizers",
    "speechkit.optim.lr_schedulers",
    # tasks
    "speechkit.tasks.speaker_verification",
    "speechkit.tasks.embedding_enhancement",
    "speechkit.tasks.hubert_pretraining",
    "speechkit.tasks.contentvec_pretraining",
    "speechkit.tasks.syncnet",
    "speechkit.tasks.target_speaker_separation",
    "speechkit.tasks.enrolment_distillation",
    # models
    "speechkit.models.resnet_se",
    "speechkit.models.vggvox",
    "speechkit.models.rawnet3",
    "speechkit.models.ecapa_tdnn",
    "speechkit.models.ecapa_tdnn_speechbrain",
    "speechkit.models.embedding_enhancement",
    "speechkit.models.hubert",
    "speechkit.models.contentvec",
    "speechkit.models.syncnet",
    "speechkit.models.voicevector",
    "speechkit.models.voicevector_enrolment",
    "speechkit.models.voicevector_composite",
    # criterions
    "speechkit.criterions.speaker_classification",
    "speechkit.criterions.speaker_metric_learning",
    "speechkit.criterions.embedding_enhancement",
    "speechkit.criterions.hubert_criterion",
    "speechkit.criterions.contentvec_criterion",
    "speechkit.criterions.syncnet_criterion",
    "speechkit.criterions.separation",
    "speechkit.criterions.enrolment_distillation",
]


def import_all() -> None:
    """Import every built-in registering module (idempotent)."""
    for name in BUILTIN_MODULES:
        importlib.import_module(name)
