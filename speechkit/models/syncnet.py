"""SyncNet with a log-mel audio stream (syncnet_trainer's ``SyncNetModelFBank``).

References:
    * Chung & Zisserman, "Out of time: automated lip sync in the wild", ACCV 2016 workshops
      (SyncNet: audio and lip two-stream CNNs).
    * Nagrani, Chung, Albanie & Zisserman, "Disentangled speech embeddings using cross-modal
      self-supervision", ICASSP 2020; the VoxSRC 2020 self-supervised baseline
      (joonson/syncnet_trainer): separate content (sync) and identity heads per modality.
    * joonson/syncnet_trainer ``models/SyncNetModelFBank.py`` (layers, shapes) and
      ``SyncNetDist.py`` (checkpoint keys).

``netcnnaud`` / ``netcnnlip`` are ``nn.Sequential`` with the reference indices (convs at
0/4/8/11/14/18, BNs at 1/5/9/12/15/19) and the heads ``netfcaud`` / ``netfcspk`` / ``netfclip``
/ ``netfcface`` have keys ``.0`` / ``.1`` / ``.3``: a syncnet_trainer checkpoint loads after
stripping ``__S__.`` and dropping ``torchfb.*`` (the filterbank and window here are not saved).

Frame arithmetic (25 fps video, 16 kHz audio, 100 Hz mel frames, 4 mel frames per video frame):
a clip of F video frames goes with ``4 * F * 160 + 240`` audio samples, which give
``S // 160 - 1 = 4 F`` mel frames after dropping the first and last one. Both streams then give
``T' = (F - 5) // temporal_stride + 1`` output frames (F = 50, stride 2: 32,240 samples, 200
mel frames, T' = 23). Clips need F >= 5 video frames, or at least 17 mel frames (2,880 samples)
of audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError
from speechkit.modules.frontend import LogMelFrontend
from speechkit.registry import register_model

__all__ = [
    "SyncNetConfig",
    "SyncNetFBank",
    "audio_samples_for_frames",
    "audio_output_frames",
    "video_output_frames",
]

SAMPLES_PER_VIDEO_FRAME = 640  # 16000 Hz / 25 fps
HOP_LENGTH = 160  # 10 ms at 16 kHz


@dataclass
class SyncNetConfig(SpeechkitDataclass):
    """Config of ``syncnet_fbank`` (syncnet_trainer's ``SyncNetModel(nOut, stride)``)."""

    embed_dim: int = 1024  # the reference's nOut: size of every head's output
    temporal_stride: int = 2  # time stride of the last audio conv and the first lip conv
    n_mels: int = 40
    input_scale: float = 1.0  # 32768 for checkpoints trained on int16-scale audio


def audio_samples_for_frames(num_frames: int) -> int:
    """Audio samples (16 kHz) that go with ``num_frames`` video frames: ``4 F * 160 + 240``."""
    return 4 * num_frames * HOP_LENGTH + 240


def _pool_len(length: int, kernel: int, stride: int, padding: int = 0) -> int:
    return (length + 2 * padding - kernel) // stride + 1


def audio_output_frames(num_mel_frames: int, temporal_stride: int) -> int:
    """Output frames T' of ``netcnnaud`` for ``num_mel_frames`` (after dropping 2); may be < 1."""
    t = _pool_len(num_mel_frames, 7, 1, 2)  # conv 0
    t = _pool_len(t, 3, 2)  # maxpool 3
    t = _pool_len(t, 5, 1, 1)  # conv 4
    t = _pool_len(t, 3, 1)  # maxpool 7 (convs 8/11/14 keep the length)
    t = _pool_len(t, 3, 2)  # maxpool 17
    return _pool_len(t, 1, temporal_stride) if t >= 1 else 0  # conv 18


def video_output_frames(num_frames: int, temporal_stride: int) -> int:
    """Output frames T' of ``netcnnlip`` for ``num_frames`` video frames; may be < 1."""
    return _pool_len(num_frames, 5, temporal_stride)


def _lip_spatial_out(size: int) -> int:
    s = _pool_len(size, 7, 2)  # conv 0
    s = _pool_len(s, 3, 2)  # maxpool 3
    s = _pool_len(s, 5, 2, 1)  # conv 4
    s = _pool_len(s, 3, 2, 1)  # maxpool 7
    s = _pool_len(s, 3, 2)  # maxpool 17
    return _pool_len(s, 6, 1)  # conv 18


def _mel_height_out(n_mels: int) -> int:
    h = _pool_len(n_mels, 5, 1, 2)  # conv 0
    h = _pool_len(h, 5, 2, 1)  # conv 4
    h = _pool_len(h, 3, 2)  # maxpool 7
    h = _pool_len(h, 3, 2)  # maxpool 17
    return _pool_len(h, 4, 1)  # conv 18


def _block(conv: nn.Module, channels: int, norm: type[nn.Module]) -> list[nn.Module]:
    return [conv, norm(channels), nn.ReLU(inplace=True)]


def _audio_cnn(temporal_stride: int) -> nn.Sequential:
    c2, bn = nn.Conv2d, nn.BatchNorm2d
    return nn.Sequential(
        *_block(c2(1, 96, (5, 7), stride=(1, 1), padding=(2, 2)), 96, bn),  # 0-2
        nn.MaxPool2d(kernel_size=(1, 3), stride=(1, 2)),  # 3
        *_block(c2(96, 256, (5, 5), stride=(2, 1), padding=(1, 1)), 256, bn),  # 4-6
        nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 1)),  # 7
        *_block(c2(256, 384, (3, 3), padding=(1, 1)), 384, bn),  # 8-10
        *_block(c2(384, 256, (3, 3), padding=(1, 1)), 256, bn),  # 11-13
        *_block(c2(256, 256, (3, 3), padding=(1, 1)), 256, bn),  # 14-16
        nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),  # 17
        *_block(c2(256, 512, (4, 1), stride=(1, temporal_stride), padding=(0, 0)), 512, bn),
    )


def _lip_cnn(temporal_stride: int) -> nn.Sequential:
    c3, bn = nn.Conv3d, nn.BatchNorm3d
    return nn.Sequential(
        *_block(c3(3, 96, (5, 7, 7), stride=(temporal_stride, 2, 2), padding=0), 96, bn),  # 0-2
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),  # 3
        *_block(c3(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), 256, bn),  # 4-6
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),  # 7
        *_block(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn),  # 8-10
        *_block(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn),  # 11-13
        *_block(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn),  # 14-16
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),  # 17
        *_block(c3(256, 512, (1, 6, 6), padding=0), 512, bn),  # 18-20
    )


def _head(embed_dim: int) -> nn.Sequential:
    """Conv1d(512, 512, 1) - BN1d - ReLU - Conv1d(512, embed_dim, 1): keys .0 / .1 / .3."""
    return nn.Sequential(
        nn.Conv1d(512, 512, kernel_size=1),
        nn.BatchNorm1d(512),
        nn.ReLU(inplace=True),
        nn.Conv1d(512, embed_dim, kernel_size=1),
    )


@register_model("syncnet_fbank", dataclass=SyncNetConfig)
class SyncNetFBank(nn.Module):
    """SyncNet audio (log-mel 2-D CNN) and lip (3-D CNN) streams with content and identity heads.

    Audio front-end (float32, autocast off): mel power spectrogram (n_fft 512, 400-sample
    periodic hann window, hop 160, centred reflect padding, 40 HTK mels 0-8000 Hz), ``log(x +
    1e-6)``, InstanceNorm1d without affine, then the first and last frame are dropped.

    Shapes (F video frames, ``S = 4 F 160 + 240`` samples, ``T' = (F - 5) // stride + 1``):
        * ``forward_aud(wav (B, S))`` -> ``(content, identity)``, each (B, embed_dim, T').
        * ``forward_vid(video (B, 3, F, H, W))`` -> ``(content, identity)``, (B, embed_dim, T');
          H and W must bring the lip CNN to 1x1 (224x224 face crops as the reference).
        * ``forward(audio, video)`` -> dict ``audio_content``, ``audio_identity``,
          ``video_content``, ``video_identity``.
        * ``embed_identity(wav (B, S))`` -> (B, embed_dim) speaker embedding.

    Units: audio float32 at 16 kHz in [-1, 1] (times ``input_scale``); video float32 pixel
    values 0-255, BGR channel order (cv2 frames), 25 fps, no mean/std normalisation.

    Raises:
        ConfigError: ``temporal_stride < 1`` or ``n_mels`` that does not reduce to one row.
        ValueError: wrong input rank or channels, a clip too short for one output frame, a frame
            size that does not reduce to 1x1, or (``forward``) audio and video whose T' differ.
    """

    def __init__(self, cfg: SyncNetConfig):
        super().__init__()
        if cfg.temporal_stride < 1:
            raise ConfigError(
                f"syncnet_fbank: temporal_stride must be >= 1, got {cfg.temporal_stride}"
            )
        if _mel_height_out(cfg.n_mels) != 1:
            raise ConfigError(
                f"syncnet_fbank: n_mels={cfg.n_mels} does not reduce to one row in netcnnaud "
                "(the reference uses 40)"
            )
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.temporal_stride = cfg.temporal_stride
        self.input_scale = cfg.input_scale
        self.frontend = LogMelFrontend(
            n_fft=512,
            win_length=400,
            hop_length=HOP_LENGTH,
            f_max=8000.0,
            n_mels=cfg.n_mels,
            window="hann",
            log_input=True,
            norm="instance",
        )
        self.netcnnaud = _audio_cnn(cfg.temporal_stride)
        self.netcnnlip = _lip_cnn(cfg.temporal_stride)
        self.netfcaud = _head(cfg.embed_dim)
        self.netfcspk = _head(cfg.embed_dim)
        self.netfclip = _head(cfg.embed_dim)
        self.netfcface = _head(cfg.embed_dim)

    # ------------------------------------------------------------------ audio

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, S) waveform -> (B, n_mels, S // 160 - 1) normalised log-mel, float32.

        Raises:
            ValueError: not (B, S), or too short for one output frame (fewer than 17 mel frames).
        """
        if wav.dim() != 2:
            raise ValueError(f"syncnet_fbank: expected audio (B, S), got shape {tuple(wav.shape)}")
        num_mel = wav.shape[1] // HOP_LENGTH - 1
        if wav.shape[1] <= 256 or audio_output_frames(num_mel, self.temporal_stride) < 1:
            raise ValueError(
                f"syncnet_fbank: audio clip of {wav.shape[1]} samples is too short; it needs at "
                f"least 17 mel frames (2,880 samples at 16 kHz); a clip of F video frames goes "
                f"with 4*F*160+240 samples (F=50: {audio_samples_for_frames(50)})"
            )
        if self.input_scale != 1.0:
            wav = wav * self.input_scale
        return self.frontend(wav)[:, :, 1:-1]

    def _audio_trunk(self, wav: torch.Tensor) -> torch.Tensor:
        mel = self.log_mel(wav).unsqueeze(1)  # (B, 1, n_mels, M)
        mid = self.netcnnaud(mel.to(self.netcnnaud[0].weight.dtype))  # (B, 512, 1, T')
        return mid.flatten(1, 2)

    def forward_aud(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) 16 kHz waveform -> (content ``netfcaud``, identity ``netfcspk``), (B, D, T')."""
        mid = self._audio_trunk(wav)
        return self.netfcaud(mid), self.netfcspk(mid)

    def embed_identity(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, S) waveform -> (B, embed_dim) time-mean of ``netfcspk`` (the SV embedding, §2.5)."""
        return self.netfcspk(self._audio_trunk(wav)).mean(dim=2)

    # ------------------------------------------------------------------ video

    def forward_vid(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, F, H, W) BGR 0-255 frames -> (content ``netfclip``, identity ``netfcface``),
        each (B, D, T'), ``T' = (F - 5) // temporal_stride + 1``.

        Raises:
            ValueError: not (B, 3, F, H, W), F too small, or H/W not reducing to 1x1 (use 224).
        """
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(
                f"syncnet_fbank: expected video (B, 3, F, H, W), got shape {tuple(video.shape)}"
            )
        num_frames, height, width = video.shape[2:]
        if video_output_frames(num_frames, self.temporal_stride) < 1:
            raise ValueError(
                f"syncnet_fbank: video clip of {num_frames} frames is too short; it needs at "
                "least 5 frames"
            )
        if _lip_spatial_out(height) != 1 or _lip_spatial_out(width) != 1:
            raise ValueError(
                f"syncnet_fbank: frame size {height}x{width} does not reduce to 1x1 in "
                "netcnnlip; use 224x224 face crops"
            )
        mid = self.netcnnlip(video).flatten(2)  # (B, 512, T')
        return self.netfclip(mid), self.netfcface(mid)

    def forward(self, audio: torch.Tensor, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both streams; returns ``audio_content``, ``audio_identity``, ``video_content``,
        ``video_identity``, each (B, D, T').

        Raises:
            ValueError: as the stream methods, or audio and video T' that differ (audio must
                have ``4 * F * 160 + 240`` samples for F video frames).
        """
        audio_content, audio_identity = self.forward_aud(audio)
        video_content, video_identity = self.forward_vid(video)
        if audio_content.shape[2] != video_content.shape[2]:
            num_frames = video.shape[2]
            raise ValueError(
                f"syncnet_fbank: audio gives {audio_content.shape[2]} frames but video gives "
                f"{video_content.shape[2]}; {num_frames} video frames need "
                f"{audio_samples_for_frames(num_frames)} audio samples, got {audio.shape[1]}"
            )
        return {
            "audio_content": audio_content,
            "audio_identity": audio_identity,
            "video_content": video_content,
            "video_identity": video_identity,
        }
