"""Foreign formats: read and write other projects' checkpoints (fairseq HuBERT / ContentVec,
the transformers HuBERT export, voxceleb_trainer, syncnet_trainer, SpeechBrain ECAPA).

Not to be confused with ``speechkit.trainer.checkpoint``, which writes and resumes speechkit's own
training checkpoints. Registrations are imported by ``speechkit.components``, not here.
"""
