"""HuBERT label pipeline: Kaldi MFCC + deltas, feature dumps, k-means, labels, feature extraction.

References are independent: MFCC against a float64 numpy/scipy implementation written here,
deltas against a direct loop, labels against a float64 brute-force argmin, HuBERT features
against direct ``HubertModel.extract_features`` calls. The label pipeline runs on real
LibriSpeech utterances of the shared manifest.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import scipy.fft
import soundfile as sf
import torch
import torch.nn.functional as F

from speechkit.cli import hubert_labels as hl
from speechkit.cli.extract import build_parser, legacy_key_values
from speechkit.cli.extract import main as extract_main
from speechkit.data.audio import read_audio
from speechkit.data.manifest import read_manifest, write_manifest
from speechkit.errors import CheckpointError, ConfigError
from speechkit.inference.feature_dump import ConcatFeatureWriter, shard_range
from speechkit.inference.hubert_features import HubertFeatureExtractor, chunk_bounds
from speechkit.interop.fairseq import load_fairseq_checkpoint, save_fairseq_checkpoint
from speechkit.models.hubert import HubertConfig, HubertModel
from speechkit.modules.mfcc import KaldiMFCC, compute_deltas, mfcc_delta_features

WAV = "speech/librispeech_test_other/1688/1688-142285-0002.wav"
SMALL_CONV = "[(32,10,5)] + [(32,3,2)]*4 + [(32,2,2)]*2"


# ----------------------------------------------------------------------------------------------
# MFCC and deltas
def _numpy_mfcc(wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaldi MFCC (use_energy=False) in float64: returns (log-mel (T, 23), mfcc (T, 13))."""
    x = wav.astype(np.float64)
    win, hop, nfft, n_mels = 400, 160, 512, 23
    n_frames = 1 + (len(x) - win) // hop
    frames = x[np.arange(n_frames)[:, None] * hop + np.arange(win)[None]]
    frames = frames - frames.mean(axis=1, keepdims=True)
    previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames - 0.97 * previous
    n = np.arange(win)
    frames = frames * (0.5 - 0.5 * np.cos(2 * np.pi * n / (win - 1))) ** 0.85
    power = np.abs(np.fft.rfft(frames, n=nfft)) ** 2

    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    edges = np.linspace(mel(20.0), mel(8000.0), n_mels + 2)
    bin_mel = mel(np.arange(nfft // 2) * 16000.0 / nfft)
    banks = np.zeros((nfft // 2 + 1, n_mels))
    for m in range(n_mels):
        lo, centre, hi = edges[m : m + 3]
        rising, falling = (bin_mel - lo) / (centre - lo), (hi - bin_mel) / (hi - centre)
        banks[:-1, m] = np.clip(np.minimum(rising, falling), 0.0, None)
    log_mel = np.log(np.maximum(power @ banks, np.finfo(np.float32).eps))
    ceps = scipy.fft.dct(log_mel, type=2, norm="ortho", axis=1)[:, :13]
    return log_mel, ceps * (1.0 + 11.0 * np.sin(np.pi * np.arange(13) / 22.0))


def _loop_deltas(c: np.ndarray, win_length: int = 5) -> np.ndarray:
    """Deltas along axis 0 with an explicit loop and clamped (edge-replicated) indices."""
    N = (win_length - 1) // 2
    T = c.shape[0]
    out = np.zeros_like(c, dtype=np.float64)
    denom = 2 * sum(n * n for n in range(1, N + 1))
    for t in range(T):
        for n in range(1, N + 1):
            out[t] += n * (c[min(t + n, T - 1)] - c[max(t - n, 0)])
    return out / denom


def test_mfcc_matches_float64_numpy(shared_data):
    wav = read_audio(shared_data / WAV)
    log_mel, ref = _numpy_mfcc(wav)
    mfcc = KaldiMFCC()
    ours = mfcc(torch.from_numpy(wav))[0].double().numpy()
    assert ours.shape == ref.shape == (1 + (len(wav) - 400) // 160, 13)
    err = np.abs(ours - ref)
    # float32 spectra vs float64: tiny errors, amplified by the lifter in quiet bins only
    assert np.median(err) < 1e-4 and err.max() < 2e-2, (np.median(err), err.max())
    # the DCT + lifter step itself is exact on the same log-mel input
    exact = torch.from_numpy(log_mel).float() @ mfcc.dct_lifter
    np.testing.assert_allclose(exact.double().numpy(), ref, rtol=1e-5, atol=1e-4)

    feats = mfcc_delta_features(wav).double().numpy()
    assert feats.shape == (ref.shape[0], 39)
    np.testing.assert_allclose(feats[:, :13], ours, atol=1e-6)
    d = _loop_deltas(ours)
    np.testing.assert_allclose(feats[:, 13:26], d, atol=1e-4)
    np.testing.assert_allclose(feats[:, 26:], _loop_deltas(d), atol=1e-4)


@pytest.mark.parametrize("T", [1, 2, 3, 50])
@pytest.mark.parametrize("win_length", [3, 5, 9])
def test_compute_deltas_matches_loop(T, win_length):
    g = torch.Generator().manual_seed(T * 10 + win_length)
    c = torch.randn(T, 13, generator=g, dtype=torch.float64)
    ours = compute_deltas(c, win_length=win_length, dim=0)
    np.testing.assert_allclose(ours.numpy(), _loop_deltas(c.numpy(), win_length), atol=1e-12)
    # torchaudio's layout (..., C, T) with time last gives the same
    last = compute_deltas(c.t().unsqueeze(0), win_length=win_length)
    np.testing.assert_allclose(last[0].t().numpy(), ours.numpy(), atol=1e-12)


def test_mfcc_short_input_and_bad_window():
    assert mfcc_delta_features(np.zeros(399, np.float32)).shape == (0, 39)
    assert mfcc_delta_features(np.random.randn(400).astype(np.float32)).shape == (1, 39)
    with pytest.raises(ConfigError):
        compute_deltas(torch.zeros(3, 4), win_length=2)


# ----------------------------------------------------------------------------------------------
# label pipeline on real data
def _subset_manifest(shared_data, path, start: int, count: int):
    m = read_manifest(shared_data / "lists/pretrain_manifest.tsv", root_override=shared_data)
    write_manifest(
        path, shared_data, m.paths[start : start + count], m.sizes[start : start + count]
    )
    return read_manifest(path)


K = 8
FAST = ["--n-init", "2", "--max-iter", "10", "--km-batch-size", "4096", "--threads", "1"]


@pytest.fixture(scope="module")
def mfcc_run(shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("km")
    train = _subset_manifest(shared_data, tmp / "train.tsv", 0, 40)
    valid = _subset_manifest(shared_data, tmp / "valid.tsv", 100, 6)
    out = tmp / "labels"
    argv = ["all", "--manifest", str(tmp / "train.tsv"), "--valid-manifest", str(tmp / "valid.tsv")]
    argv += ["--feature", "mfcc", "--n-clusters", str(K), "--out", str(out), *FAST]
    assert hl.main(argv) == 0
    return {"tmp": tmp, "out": out, "train": train, "valid": valid}


def test_all_pipeline_mfcc_labels(mfcc_run):
    out = mfcc_run["out"]
    for split in ("train", "valid"):
        manifest = mfcc_run[split]
        lines = (out / f"{split}.km").read_text().splitlines()
        assert len(lines) == len(manifest)
        lens = (out / "feat" / f"{split}_0_1.len").read_text().split()
        for i, line in enumerate(lines):
            n_samples = sf.info(manifest.audio_path(i)).frames
            ids = [int(v) for v in line.split()]
            assert len(ids) == 1 + (n_samples - 400) // 160 == int(lens[i])
            assert all(0 <= v < K for v in ids)
    dict_lines = (out / "dict.km.txt").read_text().splitlines()
    assert dict_lines == [f"{k} 1" for k in range(K)]
    centroids = np.load(out / "km.npy", allow_pickle=False)
    assert centroids.shape == (K, 39) and centroids.dtype == np.float32
    meta = json.loads((out / "km.json").read_text())
    assert meta["n_clusters"] == K and meta["features"]["feature"] == "mfcc"
    assert meta["minibatch_kmeans"]["n_init"] == 2 and meta["minibatch_kmeans"]["tol"] == 0.0
    train_ids = np.concatenate([np.array(x.split(), int) for x in (out / "train.km").open()])
    assert len(np.unique(train_ids)) == K  # every cluster is used on its own training data


def test_learn_is_reproducible(mfcc_run, tmp_path):
    feat_dir, out = mfcc_run["out"] / "feat", mfcc_run["out"]
    args = ["--n-clusters", str(K), *FAST, "--feat-dir", str(feat_dir), "--split", "train"]
    assert hl.main(["learn", *args, "--km", str(tmp_path / "a.npy")]) == 0
    assert hl.main(["label", "--feat-dir", str(feat_dir), "--split", "train", "--km",
                    str(tmp_path / "a.npy"), "--lab-dir", str(tmp_path)]) == 0  # fmt: skip
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(out / "km.npy"))
    assert (tmp_path / "train.km").read_text() == (out / "train.km").read_text()
    assert hl.main(["learn", *args, "--km", str(tmp_path / "b.npy"), "--seed", "1"]) == 0
    assert not np.array_equal(np.load(tmp_path / "b.npy"), np.load(out / "km.npy"))
    # utterance sampling: fewer frames, reproducible too
    for name in ("p1.npy", "p2.npy"):
        assert hl.main(["learn", *args, "--km", str(tmp_path / name), "--percent", "0.5"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "p1.npy"), np.load(tmp_path / "p2.npy"))
    n_all = json.loads((out / "km.json").read_text())["n_frames"]
    n_half = json.loads((tmp_path / "p1.json").read_text())["n_frames"]
    assert 0 < n_half < n_all


def test_labeler_equals_bruteforce(mfcc_run):
    feats, _ = hl.load_shard(mfcc_run["out"] / "feat", "train", 0, 1)
    feats = np.asarray(feats[:5000])
    centroids = np.load(mfcc_run["out"] / "km.npy")
    rng = np.random.default_rng(0)
    # near-ties: points a hair off the midpoint of two centroids
    a, b = centroids[rng.integers(0, K, 200)], centroids[rng.integers(0, K, 200)]
    eps = rng.choice([-1e-7, 0.0, 1e-7], size=(200, 1))
    ties = ((a + b) / 2 + eps * (b - a)).astype(np.float32)
    x = np.concatenate([feats, ties])
    x64, c64 = x.astype(np.float64), centroids.astype(np.float64)
    brute = ((x64[:, None, :] - c64[None]) ** 2).sum(-1).argmin(1)
    labeler = hl.KMeansLabeler(centroids, chunk_size=1000)
    np.testing.assert_array_equal(labeler(x), brute)
    _, dist = labeler(feats, return_distance=True)
    np.testing.assert_allclose(
        dist, ((x64[:5000, None] - c64[None]) ** 2).sum(-1).min(1), rtol=1e-3
    )


def test_learn_errors(mfcc_run, tmp_path):
    feat_dir = mfcc_run["out"] / "feat"
    with pytest.raises(ConfigError, match="frames for"):
        hl.learn(feat_dir, "valid", 1, tmp_path / "k.npy", 10**6)
    bad = tmp_path / "pickle.npy"
    np.save(bad, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert hl.main(["label", "--feat-dir", str(feat_dir), "--split", "valid", "--km", str(bad),
                    "--lab-dir", str(tmp_path)]) == 2  # fmt: skip
    assert not (tmp_path / "valid.km").exists()


def test_shard_range_and_writer(tmp_path):
    bounds = [shard_range(10, 3, r) for r in range(3)]
    assert bounds == [(0, 3), (3, 7), (7, 10)]  # round(10/3)=3, round(20/3)=7
    with pytest.raises(ConfigError):
        shard_range(10, 3, 3)
    with ConcatFeatureWriter(tmp_path / "x.npy", tmp_path / "x.len") as w:
        for n in (3, 0, 5):
            w.add(np.full((n, 4), n, np.float32))
    arr = np.load(tmp_path / "x.npy", allow_pickle=False)
    assert arr.shape == (8, 4) and (arr[:3] == 3).all() and (arr[3:] == 5).all()
    assert (tmp_path / "x.len").read_text().split() == ["3", "0", "5"]
    with (
        pytest.raises(RuntimeError),
        ConcatFeatureWriter(tmp_path / "y.npy", tmp_path / "y.len") as w,
    ):
        w.add(np.zeros((2, 4), np.float32))
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.len", "x.npy"]


# ----------------------------------------------------------------------------------------------
# HuBERT features
def _tiny_cfg(**kw) -> HubertConfig:
    base = dict(
        encoder_layers=3,
        encoder_embed_dim=32,
        encoder_ffn_embed_dim=64,
        encoder_attention_heads=4,
        conv_feature_layers=SMALL_CONV,
        conv_pos=16,
        conv_pos_groups=4,
        final_dim=8,
        num_classes=[K + 4],
    )
    base.update(kw)
    return HubertConfig(**base)


def _tiny_model(seed: int = 0, **kw) -> HubertModel:
    torch.manual_seed(seed)
    model = HubertModel(_tiny_cfg(**kw)).eval()
    with torch.no_grad():  # perturb norms so that GroupNorm / LayerNorm placement matters
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _speechkit_ckpt(model: HubertModel, path, name: str = "hubert", **model_extra):
    cfg = {k: v for k, v in dataclasses.asdict(model.cfg).items() if k != "_name"}
    cfg.update(_name=name, **model_extra)
    torch.save({"cfg": {"model": cfg, "task": {}}, "model": model.state_dict()}, path)
    return path


def _direct(model, wav: torch.Tensor, layer: int) -> torch.Tensor:
    with torch.no_grad():
        return model.extract_features(wav[None], None, output_layer=layer)[0][0]


def test_hubert_dump_frame_counts(shared_data, tmp_path):
    model = _tiny_model()
    ckpt = _speechkit_ckpt(model, tmp_path / "ckpt.pt")
    manifest = _subset_manifest(shared_data, tmp_path / "m.tsv", 200, 4)
    featurizer = hl.Featurizer("hubert", str(ckpt), 2)
    npy = hl.dump(tmp_path / "m.tsv", tmp_path / "feat", featurizer, batch_size=3)
    feats, lengths = hl.load_shard(tmp_path / "feat", "m", 0, 1)
    assert feats.shape[1] == 32 and npy.name == "m_0_1.npy"
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for i in range(len(manifest)):
        wav = read_audio(manifest.audio_path(i))
        assert lengths[i] == (len(wav) - 400) // 320 + 1  # fairseq's conv formula, 50 Hz
        ref = _direct(model, torch.from_numpy(wav), 2).numpy()
        np.testing.assert_allclose(feats[offsets[i] : offsets[i + 1]], ref, atol=1e-4)
    info = json.loads((tmp_path / "feat" / "m_0_1.json").read_text())
    assert info["frame_rate"] == 50.0 and info["layer"] == 2 and info["normalize"] is False


def test_extractor_chunking_and_batching(shared_data, tmp_path):
    model = _tiny_model()
    ex = HubertFeatureExtractor.from_checkpoint(_speechkit_ckpt(model, tmp_path / "c.pt"))
    wav = torch.from_numpy(read_audio(shared_data / WAV))  # 45360 samples
    # a short input (one chunk) equals a direct extract_features call
    torch.testing.assert_close(ex.features(wav, 3), _direct(model, wav, 3), rtol=0, atol=1e-6)
    # chunked: chunks are independent, the frame count is the per-chunk formula summed
    ex.max_chunk = 16000
    bounds = chunk_bounds(len(wav), 16000)
    assert len(bounds) == 3 and bounds[-1][1] - bounds[-1][0] == 13360
    feats = ex.features(wav, 1)
    expected = sum((e - s - 400) // 320 + 1 for s, e in bounds)
    assert feats.shape == (expected, 32) == (ex.num_frames(len(wav)), 32)
    assert expected != (len(wav) - 400) // 320 + 1
    torch.testing.assert_close(feats[:49], _direct(model, wav[:16000], 1), rtol=0, atol=1e-5)
    torch.testing.assert_close(feats[-41:], _direct(model, wav[32000:], 1), rtol=0, atol=1e-5)
    # a padded batch gives each utterance's own features (GroupNorm ignores padding)
    ex.max_chunk = 1_600_000
    wavs = [wav[:30000], wav, wav[5000:12000], wav[:300]]
    batch = ex.features_batch(wavs, 2)
    for w, f in zip(wavs, batch):
        assert f.shape == (ex.num_frames(len(w)), 32)
        if len(w) >= 400:
            torch.testing.assert_close(f, _direct(model, w, 2), rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="1..3"):
        ex.features(wav, 4)


def test_fairseq_and_contentvec_checkpoints(shared_data, tmp_path):
    model = _tiny_model(seed=1)
    wav = torch.from_numpy(read_audio(shared_data / WAV)[:20000])
    path = save_fairseq_checkpoint(model, None, tmp_path / "fs.pt", task_cfg={"normalize": True})
    ex = HubertFeatureExtractor.from_checkpoint(path)
    assert ex.info["format"] == "fairseq" and ex.normalize
    assert ex.info["normalize_source"] == "cfg.task.normalize"
    ref = _direct(model, F.layer_norm(wav, wav.shape), 2)
    torch.testing.assert_close(ex.features(wav, 2), ref, rtol=0, atol=1e-6)
    assert not HubertFeatureExtractor.from_checkpoint(path, normalize=False).normalize

    # ContentVec "full": speaker-conditioned layers after the plain ones are not loaded
    state = load_fairseq_checkpoint(path)
    state["task_state"] = None  # keep it loadable with weights_only=True after editing
    layer0 = {k: v for k, v in state["model"].items() if k.startswith("encoder.layers.0.")}
    for k, v in layer0.items():
        if "layer_norm." not in k:  # a conditional layer's norms hold only weight_ln / bias_ln
            state["model"][k.replace("layers.0.", "layers.3.")] = v.clone()
    for ln in ("self_attn_layer_norm", "final_layer_norm"):
        for part in ("weight_ln", "bias_ln"):
            state["model"][f"encoder.layers.3.{ln}.{part}.weight"] = torch.zeros(32, 8)
    state["model"]["layer_proj.weight"] = torch.zeros(8, 32)
    state["cfg"]["model"]["_name"] = "contentvec"
    torch.save(state, tmp_path / "cv.pt")
    cv = HubertFeatureExtractor.from_checkpoint(tmp_path / "cv.pt")
    assert cv.info["conditional_layers"] == 1 and cv.num_layers == 3
    torch.testing.assert_close(cv.features(wav, 3), _direct(model, F.layer_norm(wav, wav.shape), 3))
    with pytest.raises(ConfigError, match="speaker-conditioned"):
        cv.features(wav, 4)

    # a speechkit contentvec checkpoint of the same weights loads the same way
    sk = _speechkit_ckpt(model, tmp_path / "sk.pt", name="contentvec", encoder_layers_1=1)
    sk_state = torch.load(sk)
    sk_state["model"].update({k: v for k, v in state["model"].items() if "layers.3." in k})
    torch.save(sk_state, sk)
    sk_ex = HubertFeatureExtractor.from_checkpoint(sk)
    assert not sk_ex.normalize and sk_ex.info["format"] == "speechkit"
    torch.testing.assert_close(sk_ex.features(wav, 1), _direct(model, wav, 1))

    # wrong weights are named
    broken = torch.load(sk)
    del broken["model"]["encoder.layers.1.fc1.weight"]
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="fc1"):
        HubertFeatureExtractor.from_checkpoint(tmp_path / "broken.pt")


def test_extract_cli(shared_data, tmp_path, capsys):
    model = _tiny_model()
    ckpt = _speechkit_ckpt(model, tmp_path / "c.pt")
    manifest = _subset_manifest(shared_data, tmp_path / "dev.tsv", 10, 3)
    parser = build_parser()
    with pytest.raises(ConfigError, match="did you mean 'layer'"):
        legacy_key_values(["layers=3"], parser)
    legacy = ["checkpoint=c", "layer=3", "manifest=m", "out=o", "per_utterance=true"]
    args = parser.parse_args(legacy_key_values(legacy, parser))
    assert args.per_utterance is True and args.layer == 3 and args.out == "o"
    # a value that holds '=' after an option is a value, not a key
    assert parser.parse_args(legacy_key_values(["--out", "a=b", *legacy[:3]], parser)).out == "a=b"
    base = [f"checkpoint={ckpt}", "layer=2", f"manifest={tmp_path / 'dev.tsv'}"]
    assert extract_main([*base, f"out={tmp_path / 'o'}", "batch_size=2"]) == 0
    feats = np.load(tmp_path / "o" / "dev_0_1.npy")
    lens = [int(x) for x in (tmp_path / "o" / "dev_0_1.len").read_text().split()]
    assert len(lens) == 3 and feats.shape == (sum(lens), 32)
    assert extract_main([*base, f"out={tmp_path / 'u'}", "per_utterance=true"]) == 0
    first = np.load(tmp_path / "u" / manifest.paths[0].replace(".wav", ".npy"))
    np.testing.assert_allclose(first, feats[: lens[0]], atol=1e-5)
    # the argparse form writes the same files
    flags = ["--checkpoint", str(ckpt), "--layer", "2", "--manifest", str(tmp_path / "dev.tsv")]
    assert extract_main([*flags, "--out", str(tmp_path / "n"), "--batch-size", "2"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "n" / "dev_0_1.npy"), feats)
    # unknown key / out-of-range layer: exit status 2, one-line message, nothing written
    capsys.readouterr()
    assert extract_main([*base, f"out={tmp_path / 'x'}", "btach=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'btach'" in err and "did you mean 'batch_size'" in err
    assert extract_main([*base[:1], "layer=9", *base[2:], f"out={tmp_path / 'x'}"]) == 2
    assert not (tmp_path / "x").exists()
