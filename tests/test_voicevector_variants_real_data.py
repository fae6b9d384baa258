"""Every VoiceVector variant through its experiment preset on the real talking-face clips of
``shared/data`` (Rahimi, Afouras and Zisserman, "VoiceVector", ICASSP 2024): the separation nets
``tss_voicevector_ae`` / ``_av``, the enrolment distillations ``voicevector_distill_v`` / ``_av``
/ ``_iv``, then the composites ``tss_voicevector_vem`` / ``_avem`` / ``_ivem`` built from those
distillation checkpoints (``model.enrolment_checkpoint``) and the AE run
(``model.separation_init``), the two-stage recipe of the preset comments. Each trains a few
updates with tiny sizes and saves a checkpoint; the video-only distillation lowers its L1 to the
teacher on clips of speakers it never saw.

Data, prepared once for the module: 3 training speakers (``train.txt``) and 2 held-out ones
(``held_out.txt``, the validation list of every run), one clip each, with
* lip features dumped by ``speechkit-dump-lip-features`` from a random-weight SyncNet (the
  reference's temporal stride 2: half the lip-CNN time of stride 1, ~5 s per clip on one CPU
  thread, so only these 5 short clips are dumped);
* teacher / enrolment vectors dumped by ``speechkit-dump-embeddings`` (whole utterance) from a
  random-weight 16-d ``ecapa_tdnn`` (its vectors of the 5 clips share most of their direction,
  cosine 0.91-0.99: what a student can carry over to unseen speakers is that common part);
* 3 random 128-d face embeddings for 3 of the clips and none for the 2 others (the zero-face
  input of ``iv``).

Runs go in-process through ``speechkit.train.main`` on the config that ``python -m
speechkit.train experiment=... [overrides]`` composes (a subprocess per run would add ~4 s of
start-up to each of the 8 runs); one intra-op thread (``common.num_threads=1``) as in the other
real-data training tests.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechkit import components
from speechkit.cli import dump_embeddings, dump_lip_features
from speechkit.models.syncnet import SyncNetConfig, SyncNetFBank
from speechkit.registry import MODEL_REGISTRY
from tests.helpers import compose_cfg, read_metrics

pytestmark = pytest.mark.slow

# the 5 shortest clips of distinct speakers (4.3-5.1 s; 00002 is left out: it may show the same
# person as 517600055, shared/data/README.md); held-out speakers are in no training list
TRAIN = [
    "video/voxceleb2_pcavs/00010",
    "video/voxceleb2_pcavs/517600055",
    "video/talking_heads_videoretalking/face2",
]
HELD_OUT = ["video/talking_heads_videoretalking/face3", "video/voxceleb2_pcavs/00373"]
WITH_FACES = TRAIN[:2] + HELD_OUT[:1]  # the others have no face embeddings: zeros
EMB_DIM = 16

SEPARATION_NET = [
    "hidden=8",
    "depth=3",
    "transformer_layers=1",
    "heads=4",
    "ffn_dim=64",
    f"emb_dim={EMB_DIM}",
    "enrol_hidden=16",
]
HEAD = [
    f"out_dim={EMB_DIM}",
    "proj_dim=16",
    "ecapa_channels=[32,32,32,32,96]",
    "ecapa_attention_channels=8",
    "ecapa_se_channels=8",
    "ecapa_res2net_scale=4",
]
EMBEDDING_NET = {  # the enrolment nets' sizes, for distillation and composite alike
    "v": ["d_model=32", "transformer_layers=1", "heads=2", "ffn_dim=32", *HEAD],
    "av": ["hidden=8", "depth=3", "d_model=32", "transformer_layers=1", "heads=2", "ffn_dim=32"]
    + HEAD,
    "iv": ["d_model=32", "transformer_layers=1", "heads=2", "ffn_dim=32", *HEAD],
}
HELD_OUT_UPDATES = 80
# voicevector_distill_v, the held-out L1 run: no dropout, Adam's L2 weight decay 0.1 and the rate
# falling linearly from 5e-3 to 1e-5 over the run (the warm-up ramp of the preset's
# reduce_lr_on_plateau run downwards), so that the ECAPA head's batch-norm statistics settle
# (momentum 0.1: their initial unit variance needs ~60 updates to fade) and the 3 training
# speakers are not memorised
HELD_OUT_RUN = [
    "dataset.validate_before_training=true",
    "model.dropout=0",
    "model.proj_dropout=0",
    "model.video_dropout=0",
    "optimizer.weight_decay=0.1",
    "optimization.lr=0.00001",
    f"lr_scheduler.warmup_updates={HELD_OUT_UPDATES}",
    "lr_scheduler.warmup_init_lr=0.005",
]
RUN = [
    "common.cpu=true",
    "common.num_threads=1",
    "common.log_format=none",
    "common.tensorboard_logdir=null",
    "dataset.num_workers=0",
    "dataset.batch_size=3",  # the 3 training clips: one update per epoch
    # validate and keep a numbered checkpoint at the last update only (checkpoint_last.pt is
    # still written at every epoch's end)
    "dataset.validate_interval=1000",
    "checkpoint.save_interval=1000",
]


def speaker_of(clip: str) -> str:
    """``video/voxceleb2_pcavs/741400104`` -> ``7414`` (a VoxCeleb2 id's speaker prefix); the
    other clips are one speaker each (``00010``, ``face2``)."""
    name = clip.rsplit("/", 1)[1]
    return name[:4] if len(name) == 9 and name.isdigit() else name


@pytest.fixture(scope="module")
def data(shared_data, tmp_path_factory) -> Path:
    """Lists, lip features, teacher vectors and face embeddings of the 5 clips (see above)."""
    out = tmp_path_factory.mktemp("vv_variants")
    for name, clips in (("train.txt", TRAIN), ("held_out.txt", HELD_OUT)):
        (out / name).write_text("".join(f"{speaker_of(c)} {c}.wav\n" for c in clips))
    videos = {}
    for line in (shared_data / "lists" / "video_list.txt").read_text().splitlines():
        if line.strip():
            mp4, wav = line.split()
            videos[wav.removesuffix(".wav")] = mp4
    (out / "video.txt").write_text("".join(f"{videos[c]} {c}.wav\n" for c in TRAIN + HELD_OUT))

    torch.manual_seed(0)
    syncnet = {"_name": "syncnet_fbank", "embed_dim": 32, "temporal_stride": 2}
    model = SyncNetFBank(SyncNetConfig(embed_dim=32, temporal_stride=2))
    torch.save({"cfg": {"model": syncnet}, "model": model.state_dict()}, out / "syncnet.pt")
    args = ["--list", str(out / "video.txt"), "--root", str(shared_data), "--out", str(out / "lip")]
    assert dump_lip_features.main(["--checkpoint", str(out / "syncnet.pt"), *args]) == 0
    for clip in TRAIN + HELD_OUT:
        lip = np.load(out / "lip" / f"{clip}.npy")
        frames = sf.info(shared_data / f"{clip}.wav").frames / 640
        assert lip.shape[1] == 512 and abs(lip.shape[0] - frames) <= 2 and np.isfinite(lip).all()

    speaker = {
        "_name": "ecapa_tdnn",
        "channels": 16,
        "mfa_channels": 48,
        "attention_channels": 8,
        "se_channels": 8,
        "n_mels": 20,
        "embed_dim": EMB_DIM,
    }
    components.import_all()
    torch.manual_seed(0)
    model = MODEL_REGISTRY.build(speaker)
    torch.save({"cfg": {"model": speaker}, "model": model.state_dict()}, out / "speaker.pt")
    lists = ["--list", str(out / "train.txt"), "--list", str(out / "held_out.txt")]
    argv = ["--checkpoint", str(out / "speaker.pt"), *lists, "--root", str(shared_data)]
    argv += ["--out", str(out / "emb"), "--eval-frames", "0", "--num-eval", "1"]
    assert dump_embeddings.main([*argv, "--device", "cpu"]) == 0
    for clip in TRAIN + HELD_OUT:
        emb = np.load(out / "emb" / f"{clip}.npy")
        assert emb.shape == (1, EMB_DIM) and np.isfinite(emb).all()

    rng = np.random.default_rng(0)
    for clip in WITH_FACES:
        folder = out / "faces" / clip
        folder.mkdir(parents=True)
        for k in range(3):
            np.save(folder / f"{k}.npy", rng.standard_normal(128).astype(np.float32))
    return out


def train(save_dir: Path, *overrides: str) -> Path:
    """``python -m speechkit.train *overrides checkpoint.save_dir=...``, in this process;
    restores the thread count and the root logger the run changes."""
    from speechkit.train import main

    cfg = compose_cfg([*RUN, *overrides, f"checkpoint.save_dir={save_dir}"])
    root = logging.getLogger()
    handlers, level, threads = list(root.handlers), root.level, torch.get_num_threads()
    try:
        assert main(cfg) == 0
    finally:
        torch.set_num_threads(threads)
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    return save_dir


def _task(data: Path, shared_data: Path) -> list[str]:
    return [
        f"task.root={shared_data}",
        f"task.train_list={data / 'train.txt'}",
        f"task.valid_list={data / 'held_out.txt'}",
        f"task.lip_dir={data / 'lip'}",
    ]


def _updates(n: int) -> list[str]:
    return [
        f"optimization.max_update={n}",
        f"dataset.validate_interval_updates={n}",
        f"checkpoint.save_interval_updates={n}",
    ]


@pytest.fixture(scope="module")
def runs(data, shared_data):
    """``runs(experiment)``: the save folder of that preset's run (trained on first use)."""
    done: dict[str, Path] = {}

    def run(experiment: str) -> Path:
        if experiment in done:
            return done[experiment]
        save = data / experiment
        task = _task(data, shared_data)
        kind = experiment.rsplit("_", 1)[1]
        if experiment == "tss_voicevector_ae":
            args = [f"task.embedding_dir={data / 'emb'}", "task.lip_dir=null", "task.num_enrol=2"]
            args += ["task.num_positive=1", f"task.emb_dim={EMB_DIM}"]
            args += [f"model.{o}" for o in SEPARATION_NET]
        elif experiment == "tss_voicevector_av":
            net = [o for o in SEPARATION_NET if not o.startswith(("emb_dim", "enrol_hidden"))]
            args = [f"model.{o}" for o in net]
        elif experiment.startswith("voicevector_distill_"):
            args = [f"task.embedding_dir={data / 'emb'}", f"task.emb_dim={EMB_DIM}"]
            args += [f"model.{o}" for o in EMBEDDING_NET[kind]]
            if kind == "iv":
                args.append(f"task.face_dir={data / 'faces'}")
            if kind == "v":
                args += HELD_OUT_RUN
        else:  # tss_voicevector_vem / avem / ivem
            kind = kind.removesuffix("em")
            args = [
                "task.enrol_segment=1.0",
                "task.num_enrol=2",
                "task.num_positive=1",
                f"model.enrolment_checkpoint={run(f'voicevector_distill_{kind}')}"
                "/checkpoint_best.pt",
                f"model.separation_init={run('tss_voicevector_ae')}/checkpoint_best.pt",
            ]
            args += [f"model.enrolment.{o}" for o in EMBEDDING_NET[kind]]
            args += [f"model.separation.{o}" for o in SEPARATION_NET]
            if kind == "iv":
                args.append(f"task.face_dir={data / 'faces'}")
        updates = HELD_OUT_UPDATES if experiment == "voicevector_distill_v" else 2
        done[experiment] = train(
            save,
            f"experiment={experiment}",
            *task,
            "task.segment=1.0",
            "task.num_valid=4",
            *_updates(updates),
            *args,
        )
        return done[experiment]

    return run


def test_video_distillation_lowers_held_out_l1(runs):
    """``voicevector_distill_v``: the mean L1 to the teacher on 4 fixed clips of the 2 held-out
    speakers (never trained on) falls over the run. Measured with ``common.num_threads=1``,
    before -> after (after / before): seed 1 0.183 -> 0.104 (0.57), seed 2 0.191 -> 0.121
    (0.64), seed 3 0.230 -> 0.129 (0.56), seeds 4-6 0.47, 0.37, 0.46; the bound 0.8 leaves a
    margin over the worst of these (without the decaying rate and weight decay, the held-out
    L1 rose above its starting value at 30-40 updates)."""
    valid = read_metrics(runs("voicevector_distill_v"))
    before, after = valid[0]["loss"], valid[HELD_OUT_UPDATES]["loss"]
    print(f"held-out L1 {before:.4f} -> {after:.4f}")
    assert valid[0]["num_clips"] == valid[HELD_OUT_UPDATES]["num_clips"] == 4
    assert after < 0.8 * before, (before, after)


VARIANTS = [
    ("tss_voicevector_ae", "voicevector_ae", 2),
    ("tss_voicevector_av", "voicevector_av", 2),
    ("voicevector_distill_v", "voicevector_embedding_v", HELD_OUT_UPDATES),
    ("voicevector_distill_av", "voicevector_embedding_av", 2),
    ("voicevector_distill_iv", "voicevector_embedding_iv", 2),
    ("tss_voicevector_vem", "voicevector_vem", 2),
    ("tss_voicevector_avem", "voicevector_avem", 2),
    ("tss_voicevector_ivem", "voicevector_ivem", 2),
]


@pytest.mark.parametrize("experiment, model, updates", VARIANTS)
def test_preset_trains_and_saves(runs, experiment, model, updates):
    """The run saved ``checkpoint_last.pt`` of the preset's model after its updates, with a
    finite validation loss on the held-out speakers (separation runs: finite SI-SDRi too); a
    composite's frozen enrolment net holds its distillation checkpoint's weights exactly."""
    save = runs(experiment)
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert state["cfg"]["model"]["_name"] == model
    assert state["train_state"]["num_updates"] == updates
    valid = read_metrics(save)[updates]
    assert math.isfinite(valid["loss"]), valid
    if experiment.startswith("tss_"):
        assert math.isfinite(valid["si_sdri"]) and valid["num_mixtures"] == 4, valid
    kind = experiment.rsplit("_", 1)[1]
    if kind in ("vem", "avem", "ivem"):
        distilled = runs(f"voicevector_distill_{kind.removesuffix('em')}")
        teacher = torch.load(distilled / "checkpoint_best.pt", map_location="cpu")["model"]
        frozen = {
            k.removeprefix("enrolment."): v
            for k, v in state["model"].items()
            if k.startswith("enrolment.")
        }
        assert frozen.keys() == teacher.keys()
        assert all(torch.equal(frozen[k], v) for k, v in teacher.items())
        assert state["cfg"]["model"]["separation_init"].endswith(
            "tss_voicevector_ae/checkpoint_best.pt"
        )


def test_face_run_reads_faces_and_zeros(runs, data):
    """The ``iv`` distillation's own task config gives the clips with a face folder their 3
    embeddings and the clip without one (``face2``) zeros."""
    from omegaconf import OmegaConf

    from speechkit.registry import TASK_REGISTRY

    cfg = OmegaConf.load(runs("voicevector_distill_iv") / "config.yaml")
    dataset = TASK_REGISTRY.build(cfg.task, seed=1).dataset("train")
    for index, clip in enumerate(TRAIN):
        item = dataset[index]
        assert item["meta"]["utterance"] == index and item["face"].shape == (3, 128)
        if clip in WITH_FACES:
            saved = [np.load(data / "faces" / clip / f"{k}.npy") for k in range(3)]
            assert np.array_equal(item["face"].numpy(), np.stack(saved))
        else:
            assert not item["face"].any()
