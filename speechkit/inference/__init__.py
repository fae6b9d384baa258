"""Inference with trained or converted models (no training machinery).

* ``speechkit.inference.speaker_embedding``: speaker embeddings of a speaker model
  (``SpeakerEmbedding``), batched embedding of many files and trial scoring;
* ``speechkit.inference.hubert_features``: layer features of HuBERT / ContentVec checkpoints
  (``HubertFeatureExtractor``), every layer of a full ContentVec checkpoint included;
* ``speechkit.inference.speaker_conditioning``: which speaker embedding conditions ContentVec's
  speaker-conditioned layers in a feature dump;
* ``speechkit.inference.feature_dump``: streamed, sharded feature dumps of a manifest
  (fairseq's ``simple_kmeans`` layout).

The modules are imported on use: ``from speechkit.inference.hubert_features import ...``.
"""
