"""voxceleb_trainer checkpoint conversion (speechkit/interop/voxceleb_trainer.py and
scripts/convert_voxceleb_trainer.py).

No published checkpoint can be downloaded here, so the reference files are rebuilt: the key
names and shapes below are written out from research/sv_syncnet_enh.md sections 1.0-1.5 (loops
over layers and blocks), independently of speechkit's modules, filled with random values (the
front-end buffers with their real values from numpy / librosa) and saved with ``torch.save`` in
the three layouts the reference reads.
"""

from __future__ import annotations

import math
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from speechkit.cli import convert_voxceleb_trainer as convert_script
from speechkit.cli import eval_eer as eval_script
from speechkit.errors import CheckpointError
from speechkit.inference.speaker_embedding import SpeakerEmbedding
from speechkit.interop.voxceleb_trainer import (
    convert_voxceleb_trainer,
    load_voxceleb_trainer_file,
    save_converted,
)
from speechkit.trainer.checkpoint import load_checkpoint_file

VOX_WAV = "speech/voxceleb1_mini/id10001/1zcIwhmdeo4/00001.wav"

# ------------------------------------------------------------------------------------------------
# reference key lists (research/sv_syncnet_enh.md 1.0-1.5)


def _bn(prefix: str, n: int) -> list[tuple[str, tuple]]:
    return [(f"{prefix}.{s}", (n,)) for s in ("weight", "bias", "running_mean", "running_var")] + [
        (f"{prefix}.num_batches_tracked", ())
    ]


def _se_resnet(channels, stem_shape, stem_bias, strides) -> list[tuple[str, tuple]]:
    """ResNetSE body: stem, layer1-4 of SEBasicBlocks (3, 4, 6, 3), SE reduction 8."""
    keys = [("conv1.weight", stem_shape)]
    if stem_bias:
        keys.append(("conv1.bias", (channels[0],)))
    keys += _bn("bn1", channels[0])
    inplanes = channels[0]
    for layer, (planes, blocks, stride) in enumerate(zip(channels, (3, 4, 6, 3), strides), 1):
        for i in range(blocks):
            p, cin = f"layer{layer}.{i}", inplanes if i == 0 else planes
            keys += [(f"{p}.conv1.weight", (planes, cin, 3, 3))] + _bn(f"{p}.bn1", planes)
            keys += [(f"{p}.conv2.weight", (planes, planes, 3, 3))] + _bn(f"{p}.bn2", planes)
            keys += [
                (f"{p}.se.fc.0.weight", (planes // 8, planes)),
                (f"{p}.se.fc.0.bias", (planes // 8,)),
                (f"{p}.se.fc.2.weight", (planes, planes // 8)),
                (f"{p}.se.fc.2.bias", (planes,)),
            ]
            if i == 0 and (stride != 1 or cin != planes):
                keys += [(f"{p}.downsample.0.weight", (planes, cin, 1, 1))]
                keys += _bn(f"{p}.downsample.1", planes)
        inplanes = planes
    return keys


def resnet_se34l_keys(n_mels: int = 40, n_out: int = 512) -> list[tuple[str, tuple]]:
    """ResNetSE34L, SAP (section 1.2), with the torchaudio buffers."""
    keys = _se_resnet((16, 32, 64, 128), (16, 1, 7, 7), False, (1, 2, 2, 1))
    keys += [("sap_linear.weight", (128, 128)), ("sap_linear.bias", (128,))]
    keys += [("attention", (128, 1)), ("fc.weight", (n_out, 128)), ("fc.bias", (n_out,))]
    keys += [("torchfb.spectrogram.window", (400,)), ("torchfb.mel_scale.fb", (257, n_mels))]
    return keys


def resnet_se34v2_keys(n_mels: int = 64, n_out: int = 512) -> list[tuple[str, tuple]]:
    """ResNetSE34V2, ASP (section 1.3), with pre-emphasis and the torchaudio buffers."""
    width = 256 * n_mels // 8
    keys = _se_resnet((32, 64, 128, 256), (32, 1, 3, 3), True, (1, 2, 2, 2))
    keys += [("attention.0.weight", (128, width, 1)), ("attention.0.bias", (128,))]
    keys += _bn("attention.2", 128)
    keys += [("attention.3.weight", (width, 128, 1)), ("attention.3.bias", (width,))]
    keys += [("fc.weight", (n_out, 2 * width)), ("fc.bias", (n_out,))]
    keys += [("torchfb.0.flipped_filter", (1, 1, 2)), ("torchfb.1.spectrogram.window", (400,))]
    keys += [("torchfb.1.mel_scale.fb", (257, n_mels))]
    return keys


def rawnet3_keys(c: int = 1024, n_out: int = 256) -> list[tuple[str, tuple]]:
    """RawNet3 (section 1.5): sinc front-end, three Bottle2necks (scale 8), ECA pooling."""
    keys = [("preprocess.0.flipped_filter", (1, 1, 2))]
    keys += [("preprocess.1.weight", (1,)), ("preprocess.1.bias", (1,))]
    half_kernel = 251 // 2
    keys += [(f"conv1.filterbank.{n}", (c // 8, 1)) for n in ("low_hz_", "band_hz_")]
    keys += [
        ("conv1.filterbank.window_", (half_kernel,)),
        ("conv1.filterbank.n_", (1, half_kernel)),
    ]
    keys += _bn("bn1", c // 4)
    width = c // 8
    for layer, inplanes in ((1, c // 4), (2, c), (3, c)):
        p = f"layer{layer}"
        keys += [(f"{p}.conv1.weight", (c, inplanes, 1)), (f"{p}.conv1.bias", (c,))]
        keys += _bn(f"{p}.bn1", c)
        for i in range(7):
            keys += [
                (f"{p}.convs.{i}.weight", (width, width, 3)),
                (f"{p}.convs.{i}.bias", (width,)),
            ]
            keys += _bn(f"{p}.bns.{i}", width)
        keys += [(f"{p}.conv3.weight", (c, c, 1)), (f"{p}.conv3.bias", (c,))] + _bn(f"{p}.bn3", c)
        keys += [(f"{p}.afms.alpha", (c, 1)), (f"{p}.afms.fc.weight", (c, c))]
        keys += [(f"{p}.afms.fc.bias", (c,))]
        if inplanes != c:
            keys += [(f"{p}.residual.0.weight", (c, inplanes, 1))]
    keys += [("layer4.weight", (1536, 3 * c, 1)), ("layer4.bias", (1536,))]
    keys += [("attention.0.weight", (128, 3 * 1536, 1)), ("attention.0.bias", (128,))]
    keys += _bn("attention.2", 128)
    keys += [("attention.3.weight", (1536, 128, 1)), ("attention.3.bias", (1536,))]
    keys += _bn("bn5", 3072) + [("fc6.weight", (n_out, 3072)), ("fc6.bias", (n_out,))]
    keys += _bn("bn6", n_out)
    return keys


# real front-end buffer values, computed without speechkit


def hamming_periodic(n: int) -> np.ndarray:
    return 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n) / n)


def hann_periodic(n: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)


def librosa_fb(n_mels: int, fmax: float = 8000.0, norm=None) -> np.ndarray:
    """(257, n_mels) HTK mel bank, no normalisation (torchaudio's MelScale defaults)."""
    return librosa.filters.mel(
        sr=16000, n_fft=512, n_mels=n_mels, fmin=0.0, fmax=fmax, htk=True, norm=norm
    ).T


def float32_fb(n_mels: int) -> np.ndarray:
    """The same bank computed entirely in float32, as torchaudio does (rounding ~1e-5)."""
    f32 = np.float32
    freqs = np.linspace(0, 8000, 257, dtype=f32)
    mel_max = f32(2595.0) * np.log10(f32(1.0) + f32(8000.0) / f32(700.0))
    mels = np.linspace(f32(0.0), mel_max, n_mels + 2, dtype=f32)
    hz = (f32(700.0) * (f32(10.0) ** (mels / f32(2595.0)) - f32(1.0))).astype(f32)
    slopes = hz[None, :] - freqs[:, None]
    diff = np.diff(hz)
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    return np.maximum(f32(0.0), np.minimum(down, up)).astype(f32)


FRONTEND_VALUES = {
    "spectrogram.window": lambda shape: hamming_periodic(400),
    "mel_scale.fb": lambda shape: librosa_fb(shape[1]),
    "flipped_filter": lambda shape: np.array([[[-0.97, 1.0]]]),
    "conv1.filterbank.window_": lambda shape: np.hamming(251)[:125],
    "conv1.filterbank.n_": lambda shape: 2 * np.pi * np.arange(-125, 0)[None] / 16000.0,
}


def fill(keys: list[tuple[str, tuple]], seed: int) -> dict[str, torch.Tensor]:
    """Random tensors of the given shapes, scaled so activations neither vanish nor explode
    (He-normal weights, BatchNorm statistics near identity), and real front-end buffers."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in keys:
        special = next((f for s, f in FRONTEND_VALUES.items() if key.endswith(s)), None)
        leaf = key.rsplit(".", 1)[-1]
        if special is not None:
            value = torch.as_tensor(special(shape), dtype=torch.float32).reshape(shape)
        elif leaf == "num_batches_tracked":
            value = torch.tensor(1000, dtype=torch.long)
        elif leaf == "running_var":
            value = 1.0 + 0.1 * torch.rand(shape, generator=g)
        elif leaf == "low_hz_":
            value = torch.linspace(30.0, 6000.0, shape[0]).reshape(shape)
        elif leaf == "band_hz_":
            value = 50.0 + 100.0 * torch.rand(shape, generator=g)
        elif len(shape) >= 2:
            value = torch.randn(shape, generator=g) * math.sqrt(2.0 / math.prod(shape[1:]))
        elif leaf in ("weight", "alpha"):  # norm scales, AFMS offsets
            value = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            value = 0.1 * torch.randn(shape, generator=g)
        state[key] = value
    return state


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def angleproto_loss() -> dict[str, torch.Tensor]:
    return {"__L__.w": torch.tensor(12.5), "__L__.b": torch.tensor(-6.25)}


def softmaxproto_loss(seed: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "__L__.softmax.fc.weight": torch.randn(5994, 512, generator=g) * 0.05,
        "__L__.softmax.fc.bias": torch.randn(5994, generator=g) * 0.05,
        "__L__.angleproto.w": torch.tensor(11.0),
        "__L__.angleproto.b": torch.tensor(-4.5),
    }


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tiny forward passes run fastest (and steadiest on a busy machine) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lite_state() -> dict[str, torch.Tensor]:
    keys = resnet_se34l_keys()
    state = {**prefixed(fill(keys, 1), "__S__."), **angleproto_loss()}
    assert len(keys) == 287  # the research's count for ResNetSE34L, buffers included
    return state


@pytest.fixture(scope="module")
def lite_file(tmp_path_factory, lite_state) -> Path:
    """baseline_lite_ap.model in the legacy layout and legacy (pre-1.6) serialisation."""
    path = tmp_path_factory.mktemp("vt") / "baseline_lite_ap.model"
    torch.save(lite_state, path, _use_new_zipfile_serialization=False)
    return path


@pytest.fixture(scope="module")
def wav(shared_data) -> np.ndarray:
    data, sr = sf.read(shared_data / VOX_WAV, dtype="float32")
    assert sr == 16000
    return data


def assert_same_tensors(source: dict, converted: dict, prefix: str) -> None:
    for key, value in source.items():
        if key.startswith(prefix) and not key.startswith("__S__.torchfb."):
            got = converted[key[len(prefix) :]]
            assert got.shape == value.shape, key
            assert torch.equal(got, value.to(got.dtype)), key


# ------------------------------------------------------------------------------------------------
# the three layouts


def test_resnet_se34l_legacy_file(lite_file, lite_state, tmp_path, wav, shared_data):
    ckpt, report = convert_voxceleb_trainer(lite_file)
    assert report.layout == "legacy" and report.model == "resnet_se34l"
    assert report.unmapped == [] and report.missing == [] and report.shape_mismatch == []
    assert report.problems() == []
    assert [c.ok for c in report.frontend_checks] == [True, True]
    assert report.mapped == 285 + 2  # 287 entries minus 2 torchfb buffers, plus w and b
    cfg = ckpt["cfg"]["model"]
    assert cfg["_name"] == "resnet_se34l" and cfg["n_mels"] == 40 and cfg["encoder_type"] == "SAP"
    assert cfg["embed_dim"] == 512 and cfg["input_scale"] == 32768.0  # from the file name
    assert ckpt["cfg"]["criterion"]["_name"] == "angleproto"
    assert_same_tensors(lite_state, ckpt["model"], "__S__.")
    assert_same_tensors(lite_state, ckpt["criterion"], "__L__.")
    assert sorted(ckpt["converted_from"]["dropped_keys"]) == [
        "__S__.torchfb.mel_scale.fb",
        "__S__.torchfb.spectrogram.window",
    ]

    out = tmp_path / "lite.pt"
    save_converted(ckpt, out)
    assert load_checkpoint_file(out)["cfg"]["model"]["input_scale"] == 32768.0  # weights_only
    embedder = SpeakerEmbedding.from_checkpoint(out, eval_frames=100, num_eval=2)
    with torch.no_grad():
        batch = embedder.model(torch.from_numpy(np.stack([wav[:16240], wav[-16240:]])))
    assert batch.shape == (2, 512) and torch.isfinite(batch).all()
    assert not torch.allclose(batch[0], batch[1], atol=1e-3)  # depends on its input
    emb = embedder.embed(shared_data / VOX_WAV)
    assert emb.shape == (512,) and torch.isclose(emb.norm(), torch.tensor(1.0))


def test_resnet_se34v2_new_layout(tmp_path, wav):
    """The newer {model_state_dict, optimizer_state_dict, scheduler_state_dict, epoch} dict."""
    keys = resnet_se34v2_keys()
    assert len(keys) == 295  # the research's count for ResNetSE34V2, buffers included
    state = {**prefixed(fill(keys, 2), "__S__."), **softmaxproto_loss()}
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([param], lr=1e-3)
    param.sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.95)
    path = tmp_path / "model000000100.model"
    torch.save(
        {
            "model_state_dict": state,
            "optimizer_state_dict": optimizer.state_dict(),
            "scheduler_state_dict": scheduler.state_dict(),
            "epoch": 100,
        },
        path,
    )
    ckpt, report = convert_voxceleb_trainer(path)
    assert report.layout == "new" and report.model == "resnet_se34v2"
    assert report.problems() == [] and report.unmapped == [] and report.missing == []
    assert len(report.frontend_checks) == 3 and all(c.ok for c in report.frontend_checks)
    cfg = ckpt["cfg"]["model"]
    assert (cfg["n_mels"], cfg["encoder_type"], cfg["embed_dim"]) == (64, "ASP", 512)
    assert cfg["input_scale"] == 1.0  # written by current code: soundfile scale
    crit = ckpt["cfg"]["criterion"]
    assert (crit["_name"], crit["num_classes"], crit["embed_dim"]) == ("softmaxproto", 5994, 512)
    assert ckpt["converted_from"]["epoch"] == 100
    assert_same_tensors(state, ckpt["model"], "__S__.")
    assert_same_tensors(state, ckpt["criterion"], "__L__.")
    assert len(ckpt["model"]) == 295 - 3 and len(ckpt["criterion"]) == 4

    out = tmp_path / "v2.pt"
    save_converted(ckpt, out)
    model = SpeakerEmbedding.from_checkpoint(out).model
    with torch.no_grad():
        emb = model(torch.from_numpy(np.stack([wav[:8000], wav[8000:16000]])))
    assert emb.shape == (2, 512) and torch.isfinite(emb).all()
    assert not torch.allclose(emb[0], emb[1], atol=1e-3)


def test_rawnet3_model_layout(tmp_path, shared_data):
    """RawNet3's {"model": state_dict without prefix}; its front-end buffers are checked."""
    state = fill(rawnet3_keys(), 3)
    path = tmp_path / "model.pt"
    torch.save({"model": state}, path)
    assert load_voxceleb_trainer_file(path).layout == "rawnet3"
    ckpt, report = convert_voxceleb_trainer(path)
    assert report.model == "rawnet3" and report.problems() == []
    assert report.unmapped == [] and report.missing == [] and report.mapped == len(state)
    checked = {c.key for c in report.frontend_checks if c.ok}
    assert checked == {
        "__S__.preprocess.0.flipped_filter",
        "__S__.conv1.filterbank.window_",
        "__S__.conv1.filterbank.n_",
    }
    cfg = ckpt["cfg"]["model"]
    assert (cfg["channels"], cfg["embed_dim"], cfg["encoder_type"]) == (1024, 256, "ECA")
    assert cfg["context"] is True and cfg["input_scale"] == 1.0
    assert ckpt["cfg"]["criterion"]["_name"] == "aamsoftmax" and ckpt["criterion"] == {}
    assert_same_tensors(prefixed(state, "__S__."), ckpt["model"], "__S__.")

    out = tmp_path / "rawnet3.pt"
    save_converted(ckpt, out)
    emb = SpeakerEmbedding.from_checkpoint(out, eval_frames=100, num_eval=2).embed(
        shared_data / VOX_WAV
    )
    assert emb.shape == (256,) and torch.isfinite(emb).all()


def vggvox40_keys(n_out: int = 512, sap: bool = True) -> list[tuple[str, tuple]]:
    """VGGVox40 (section 1.4): netcnn convs 0/4/8/11/14/18 with bias, BNs 1/5/9/12/15/19."""
    convs = [(0, 1, 96, (5, 7)), (4, 96, 256, (5, 5)), (8, 256, 384, (3, 3))]
    convs += [(11, 384, 256, (3, 3)), (14, 256, 256, (3, 3)), (18, 256, 512, (4, 1))]
    keys = []
    for idx, c_in, c_out, kernel in convs:
        keys += [(f"netcnn.{idx}.weight", (c_out, c_in, *kernel)), (f"netcnn.{idx}.bias", (c_out,))]
        keys += _bn(f"netcnn.{idx + 1}", c_out)
    if sap:
        keys += [("sap_linear.weight", (512, 512)), ("sap_linear.bias", (512,))]
        keys += [("attention", (512, 1))]
    keys += [("fc.weight", (n_out, 512)), ("fc.bias", (n_out,))]
    keys += [("torchfb.spectrogram.window", (400,)), ("torchfb.mel_scale.fb", (257, 40))]
    return keys


def test_vggvox40_legacy_file(tmp_path, shared_data):
    """VGGVox40 with SAP: every key maps, the hann-window mel front-end checks out, and the
    converted model embeds real speech; without sap_linear the pooling must be named."""
    state = prefixed(fill(vggvox40_keys(), 4), "__S__.")
    state["__S__.torchfb.spectrogram.window"] = torch.from_numpy(hann_periodic(400)).float()
    path = tmp_path / "vggvox.model"
    torch.save({**state, **angleproto_loss()}, path)
    ckpt, report = convert_voxceleb_trainer(path)
    assert report.model == "vggvox40" and report.problems() == []
    assert report.unmapped == [] and report.missing == []
    assert report.frontend_checks and all(c.ok for c in report.frontend_checks)
    cfg = ckpt["cfg"]["model"]
    assert (cfg["encoder_type"], cfg["embed_dim"]) == ("SAP", 512)
    assert_same_tensors(state, ckpt["model"], "__S__.")
    out = tmp_path / "vggvox.pt"
    save_converted(ckpt, out)
    emb = SpeakerEmbedding.from_checkpoint(out, eval_frames=100, num_eval=2).embed(
        shared_data / VOX_WAV
    )
    assert emb.shape == (512,) and torch.isfinite(emb).all()

    no_sap = prefixed(fill(vggvox40_keys(sap=False), 4), "__S__.")
    no_sap["__S__.torchfb.spectrogram.window"] = torch.from_numpy(hann_periodic(400)).float()
    path = tmp_path / "vggvox_max.model"
    torch.save(no_sap, path)
    with pytest.raises(CheckpointError, match="MAX or TAP"):
        convert_voxceleb_trainer(path)
    ckpt, report = convert_voxceleb_trainer(path, model_overrides={"encoder_type": "MAX"})
    assert ckpt["cfg"]["model"]["encoder_type"] == "MAX" and report.missing == []


def test_module_prefix_and_legacy_format_are_read(tmp_path, lite_state):
    """DataParallel's 'module.' prefix is stripped; torch's zip format is read as well."""
    path = tmp_path / "wrapped.model"
    torch.save({"module." + k: v for k, v in lite_state.items()}, path)
    source = load_voxceleb_trainer_file(path)
    assert source.layout == "legacy" and set(source.state) == set(lite_state)
    assert source.sha256 is not None and len(source.sha256) == 64
    _, report = convert_voxceleb_trainer(path)  # an unknown legacy file: 1.0, with a note
    assert report.input_scale == 1.0 and "input_scale=32768" in report.input_scale_source


# ------------------------------------------------------------------------------------------------
# input scale


def test_input_scale_recorded_and_applied(lite_file, wav):
    ckpt_int16, _ = convert_voxceleb_trainer(lite_file)  # 32768 by the file name
    ckpt_float, report = convert_voxceleb_trainer(lite_file, input_scale=1.0)
    assert report.input_scale == 1.0 and ckpt_float["cfg"]["model"]["input_scale"] == 1.0
    assert ckpt_int16["cfg"]["model"]["input_scale"] == 32768.0

    def embedder(ckpt):
        from speechkit import components
        from speechkit.registry import MODEL_REGISTRY

        components.import_all()
        model = MODEL_REGISTRY.build(ckpt["cfg"]["model"])
        model.load_state_dict(ckpt["model"])
        return SpeakerEmbedding(model)

    x = torch.from_numpy(wav[:16000].copy())
    x[6000:10000] = 0.0  # digital silence: its frames sit at the log(mel + 1e-6) floor
    scaled = embedder(ckpt_int16).embed(x)
    manual = embedder(ckpt_float).embed(32768.0 * x)
    unscaled = embedder(ckpt_float).embed(x)
    torch.testing.assert_close(scaled, manual, rtol=1e-4, atol=1e-5)
    # the floor makes the model scale-dependent, so the recorded scale is not a no-op
    assert float((scaled - unscaled).abs().max()) > 1e-3


# ------------------------------------------------------------------------------------------------
# front-end checks


def _with(state: dict, key: str, value: np.ndarray) -> dict:
    out = dict(state)
    out[key] = torch.as_tensor(value, dtype=torch.float32).reshape(state[key].shape)
    return out


def test_frontend_check_accepts_float32_torchaudio_bank(lite_state):
    state = _with(lite_state, "__S__.torchfb.mel_scale.fb", float32_fb(40))
    _, report = convert_voxceleb_trainer(state)
    fb_check = next(c for c in report.frontend_checks if c.key.endswith("mel_scale.fb"))
    assert fb_check.ok and 0.0 < fb_check.max_abs_diff < 1e-4


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("__S__.torchfb.mel_scale.fb", librosa_fb(40, fmax=7600.0), "mel filterbank DIFFERENT"),
        ("__S__.torchfb.mel_scale.fb", librosa_fb(40, norm="slaney"), "mel filterbank DIFFERENT"),
        ("__S__.torchfb.spectrogram.window", hann_periodic(400), "analysis window DIFFERENT"),
    ],
    ids=["fmax7600", "slaney-norm", "hann-window"],
)
def test_frontend_mismatch_is_reported(lite_state, key, value, fragment, tmp_path):
    state = _with(lite_state, key, value)
    _, report = convert_voxceleb_trainer(state)
    bad = report.frontend_mismatches
    assert [c.key for c in bad] == [key] and fragment in bad[0].message
    assert bad[0].max_abs_diff > 1e-3
    assert any("front-end differs" in p for p in report.problems())
    assert report.problems(allow_frontend_mismatch=True) == []
    # the script refuses the file (exit 2, nothing written) unless the mismatch is allowed
    path = tmp_path / "bad_frontend.model"
    torch.save(state, path)
    out = tmp_path / "out.pt"
    assert convert_script.main(["--input", str(path), "--output", str(out)]) == 2
    assert not out.exists()
    args = ["--input", str(path), "--output", str(out), "--allow-frontend-mismatch"]
    assert convert_script.main(args) == 0 and out.is_file()


def test_preemphasis_mismatch_is_reported():
    state = prefixed(fill(resnet_se34v2_keys(), 4), "__S__.")
    state["__S__.torchfb.0.flipped_filter"] = torch.tensor([[[-0.95, 1.0]]])
    _, report = convert_voxceleb_trainer(state)
    assert [c.key for c in report.frontend_mismatches] == ["__S__.torchfb.0.flipped_filter"]
    # a ResNetSE34L file that carries a pre-emphasis buffer: speechkit's model has none
    lite = prefixed(fill(resnet_se34l_keys(), 5), "__S__.")
    lite["__S__.torchfb.0.flipped_filter"] = torch.tensor([[[-0.97, 1.0]]])
    _, report = convert_voxceleb_trainer(lite)
    assert any("has none" in c.message for c in report.frontend_mismatches)


# ------------------------------------------------------------------------------------------------
# errors and the script


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.model"
    torch.save({"__S__.fc.weight": torch.zeros(2, 2), "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        convert_voxceleb_trainer(path)
    assert convert_script.main(["--input", str(path), "--output", str(tmp_path / "o.pt")]) == 2
    assert not marker.exists()


def test_missing_and_misshaped_keys_are_problems(lite_state):
    state = dict(lite_state)
    del state["__S__.layer2.1.bn1.running_var"]
    state["__S__.layer1.0.conv1.weight"] = torch.zeros(16, 16, 5, 5)
    _, report = convert_voxceleb_trainer(state)
    assert report.missing == ["__S__.layer2.1.bn1.running_var"]
    assert report.shape_mismatch == [
        ("__S__.layer1.0.conv1.weight", (16, 16, 5, 5), (16, 16, 3, 3))
    ]
    problems = report.problems(allow_unmapped=True, allow_frontend_mismatch=True)
    assert len(problems) == 2


def test_unknown_files_raise_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="unknown layout"):
        convert_voxceleb_trainer({"weights": [1, 2, 3]})
    with pytest.raises(CheckpointError, match="without '__S__.' / '__L__.' keys"):
        convert_voxceleb_trainer({"conv1.weight": torch.zeros(1)})
    thin = prefixed(
        fill(_se_resnet((32, 64, 128, 256), (32, 1, 7, 7), False, (1, 2, 2, 1)), 6), "__S__."
    )
    with pytest.raises(CheckpointError, match=r"stem conv1.weight is \(32, 1, 7, 7\)"):
        convert_voxceleb_trainer(thin)
    with pytest.raises(CheckpointError, match="not found"):
        convert_voxceleb_trainer(tmp_path / "nope.model")


def test_script_strict_on_unmapped_keys(lite_state, tmp_path, capsys):
    state = dict(lite_state)
    state["__S__.projection.weight"] = torch.zeros(4, 4)
    path = tmp_path / "extra.model"
    torch.save(state, path)
    out = tmp_path / "extra.pt"
    assert convert_script.main(["--input", str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "__S__.projection.weight" in err and "--allow-unmapped" in err
    assert not out.exists()
    args = [
        "--input",
        str(path),
        "--output",
        str(out),
        "--allow-unmapped",
        "--input-scale",
        "32768",
    ]
    assert convert_script.main(args) == 0
    assert "model.input_scale=32768.0" in capsys.readouterr().out
    assert load_checkpoint_file(out)["cfg"]["model"]["input_scale"] == 32768.0
    assert convert_script.main(args) == 2  # the output exists: --overwrite needed
    assert "--overwrite" in capsys.readouterr().err


def test_script_overrides_and_eval_eer(lite_file, tmp_path, shared_data, capsys):
    out = tmp_path / "lite_ge2e.pt"
    args = ["--input", str(lite_file), "--output", str(out), "--loss", "ge2e", "--no-such"]
    with pytest.raises(SystemExit):
        convert_script.main(args)
    assert convert_script.main(args[:-1] + ["--log-input", "false"]) == 0
    cfg = load_checkpoint_file(out)["cfg"]
    assert cfg["criterion"]["_name"] == "ge2e" and cfg["model"]["log_input"] is False
    capsys.readouterr()
    rc = eval_script.main([
        "--checkpoint", str(out),
        "--test-list", str(shared_data / "lists/voxceleb1_mini_trials.txt"),
        "--test-path", str(shared_data), "--eval-frames", "100", "--num-eval", "2",
    ])  # fmt: skip
    assert rc == 0 and "EER" in capsys.readouterr().out
