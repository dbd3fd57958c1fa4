"""`qsens reference build|show` and the real-model scorer (Inception FID + CLIP), offline.

Stand-ins (tests/standins.py): a TorchScript file with clean-fid's Inception interface and random
weights, a tiny random CLIPModel with a hand-written tokenizer, small JPEG/PNG images of several
modes. Independent checks go through clean-fid's own code (`InceptionV3W`, `get_files_features`)
and through the CLIP sub-models directly.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from standins import STANDIN_INCEPTION_NAME, write_standin_inception, write_test_images, write_tiny_clip  # noqa: E402

from denoisers.base import Generation, ReferenceData  # noqa: E402
from qsens.cli import main  # noqa: E402
from core.errors import QsensError  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")]

RES = 32
# COCO-style: ids unrelated to the sorted order, annotations shuffled, several per image, an
# image not in the folder, captions with stray whitespace.
COCO_IDS = {"000001.jpg": 17, "000002.png": 3, "000003.jpg": 99, "000004.png": 5,
            "000005.png": 42, "000006.jpg": 8, "999999.jpg": 1}
ANNOTATIONS = [(5, "a red  kite\nover a field"), (3, "two dogs"), (17, "a cat on a mat"),
               (3, "dogs, again"), (99, "  a bowl of fruit "), (42, "a tall tower"),
               (17, "second cat caption"), (8, "a boat at sea"), (1, "not in the folder"),
               (99, "fruit again")]
ID2LABEL = {0: "tench, Tinca tinca", 1: "goldfish", 2: "great white shark, white shark"}
EXPECTED_PROMPTS = ["a cat on a mat", "two dogs", "a bowl of fruit", "a red kite over a field",
                    "a tall tower", "a boat at sea"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference_assets")
    names = write_test_images(root / "images")
    coco = {"images": [{"id": i, "file_name": n, "width": 1, "height": 1} for n, i in COCO_IDS.items()],
            "annotations": [{"id": k, "image_id": i, "caption": c}
                            for k, (i, c) in enumerate(ANNOTATIONS)]}
    (root / "captions.json").write_text(json.dumps(coco))
    (root / "captions.txt").write_text("\n".join(f"caption {k} of {n}" for k, n in enumerate(names)) + "\n")
    write_standin_inception(root / STANDIN_INCEPTION_NAME, seed=0)
    write_standin_inception(root / "other-standin-inception.pt", seed=1)
    write_tiny_clip(root / "clip")
    return {"root": root, "images": root / "images", "names": names, "coco": root / "captions.json",
            "txt": root / "captions.txt", "inception": root / STANDIN_INCEPTION_NAME,
            "other": root / "other-standin-inception.pt", "clip": root / "clip"}


def build_args(a, out, **over):
    opts = {"--images": a["images"], "--captions": a["coco"], "--resolution": RES,
            "--num-images": 6, "--inception": a["inception"], "--out": out, "--batch-size": 4}
    opts.update(over)
    args = ["reference", "build", "--quiet"]
    for k, v in opts.items():
        if v is not None:
            args += [k, str(v)]
    return args


@pytest.fixture(scope="module")
def built(assets, tmp_path_factory):
    """A reference built through the CLI (with the tiny CLIP), and its exit code."""
    out = tmp_path_factory.mktemp("ref") / "coco32"
    rc = main(build_args(assets, out, **{"--clip": assets["clip"]}))
    return rc, out


def independent_crop(x: np.ndarray) -> np.ndarray:
    """Shorter side → RES (PIL bicubic), centre crop: written out here, not imported."""
    img = Image.fromarray(x)
    w, h = img.size
    nw, nh = (RES, round(h * RES / w)) if w <= h else (round(w * RES / h), RES)
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    l, t = (nw - RES) // 2, (nh - RES) // 2
    return np.asarray(img.crop((l, t, l + RES, t + RES)))


def crops(a) -> np.ndarray:
    return np.stack([independent_crop(np.asarray(Image.open(a["images"] / n).convert("RGB")))
                     for n in a["names"]])


@pytest.fixture(scope="module")
def scorer(built):
    from sampling.inception import InceptionClipScorer

    return InceptionClipScorer(built[1], batch_size=4, label_names=ID2LABEL)


# ----------------------------------------------------------------------------------------------
# build
# ----------------------------------------------------------------------------------------------
def test_build_through_cli_writes_stats_prompts_and_identity(assets, built):
    from safetensors.numpy import load_file

    from core.provenance import file_sha256

    rc, out = built
    assert rc == 0
    info = json.loads((out / "reference.json").read_text())
    assert info["format"] == 1 and info["kind"] == "inception" and info["mode"] == "clean"
    assert info["resolution"] == RES and info["n_images"] == 6
    assert info["feature_network"]["file"] == str(assets["inception"])
    assert info["feature_network"]["sha256"] == file_sha256(assets["inception"])
    assert info["feature_network"]["name"] == "clean-fid inception-2015-12-05 pool3 (2048-d)"
    assert info["clip_model"] == str(assets["clip"]) and info["captions"] == str(assets["coco"])
    assert info["images"] == str(assets["images"]) and info["prompts_file"] == "prompts.txt"
    # first caption per image in annotation order, whitespace collapsed, sorted image order
    assert (out / "prompts.txt").read_text().splitlines() == EXPECTED_PROMPTS
    assert (out / "images.txt").read_text().splitlines() == assets["names"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left

    # mu/sigma == clean-fid's own pipeline: its InceptionV3W on the stand-in (under the file name
    # it expects), its file loader + "clean" resize, our crop only as a custom image transform
    from cleanfid.fid import get_files_features
    from cleanfid.inception_torchscript import InceptionV3W

    netdir = out.parent / "cleanfid_net"
    netdir.mkdir(exist_ok=True)
    shutil.copy(assets["inception"], netdir / "inception-2015-12-05.pt")
    net = InceptionV3W(str(netdir), download=False).eval()
    files = [str(assets["images"] / n) for n in assets["names"]]
    feats = get_files_features(files, net, num_workers=0, batch_size=4, device=torch.device("cpu"),
                               mode="clean", custom_image_tranform=independent_crop, verbose=False)
    stats = load_file(str(out / "stats.safetensors"))
    assert stats["mu"].dtype == np.float64 and stats["sigma"].shape == (2048, 2048)
    np.testing.assert_allclose(stats["mu"], feats.astype(np.float64).mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats["sigma"], np.cov(feats.astype(np.float64), rowvar=False),
                               rtol=1e-4, atol=1e-7)
    assert np.trace(stats["sigma"]) > 1e-3  # the images differ: a real covariance


def test_image_modes_become_rgb_crops(assets):
    from sampling.reference import load_image

    for n, expected in zip(assets["names"], crops(assets)):
        got = load_image(assets["images"] / n, RES)
        assert got.shape == (RES, RES, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected)
    grey = load_image(assets["images"] / "000002.png", RES)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_txt_captions_match_by_position_and_show(assets, tmp_path, capsys):
    out = tmp_path / "ref_txt"
    assert main(build_args(assets, out, **{"--captions": assets["txt"], "--num-images": 4})) == 0
    lines = (out / "prompts.txt").read_text().splitlines()
    assert lines == [f"caption {k} of {n}" for k, n in enumerate(assets["names"][:4])]
    capsys.readouterr()
    assert main(["reference", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "4 from" in shown and f"at {RES} px" in shown and "caption 0 of 000001.jpg" in shown
    from core.provenance import file_sha256
    assert file_sha256(assets["inception"]) in shown


def test_rebuild_replaces_reference_without_captions(assets, built, tmp_path):
    out = tmp_path / "ref"
    assert main(build_args(assets, out)) == 0
    assert (out / "prompts.txt").exists()
    assert main(build_args(assets, out, **{"--captions": None, "--num-images": 3})) == 0
    info = json.loads((out / "reference.json").read_text())
    assert info["n_images"] == 3 and info["prompts_file"] is None and info["captions"] is None
    assert not (out / "prompts.txt").exists()
    from sampling.reference import load_reference
    ref = load_reference(out)
    assert ref.prompts is None and ref.images == assets["names"][:3]


# ----------------------------------------------------------------------------------------------
# one-line errors, exit code 2
# ----------------------------------------------------------------------------------------------
def run_error(args, capsys) -> str:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_missing_inception_file(assets, tmp_path, capsys):
    err = run_error(build_args(assets, tmp_path / "r", **{"--inception": tmp_path / "nope.pt"}), capsys)
    assert "nope.pt not found" in err and "nvlabs-fi-cdn" in err and "--inception PATH" in err
    assert not (tmp_path / "r").exists()


def test_not_torchscript_inception_file(assets, tmp_path, capsys):
    bad = tmp_path / "inception.pt"
    bad.write_bytes(b"not a zip archive")
    err = run_error(build_args(assets, tmp_path / "r", **{"--inception": bad}), capsys)
    assert "inception.pt is not a TorchScript file" in err


def test_network_without_clean_fid_interface(assets, tmp_path, capsys):
    import warnings

    class Wrong(torch.nn.Module):  # has `layers`, but 16 features instead of 2048
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 13, 13), torch.nn.AdaptiveAvgPool2d(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(Wrong()), str(tmp_path / "wrong.pt"))
    err = run_error(build_args(assets, tmp_path / "r", **{"--inception": tmp_path / "wrong.pt"}), capsys)
    assert "wrong.pt does not map (1, 3, 299, 299) images to 2048 features" in err


def test_feature_extraction_leaves_tf32_flags_as_they_were(assets):
    from sampling.inception import inception_features, load_inception

    net = load_inception(assets["inception"])
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    seen = []
    hook = net.register_forward_pre_hook(
        lambda m, a: seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)))
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        inception_features(net, np.zeros((2, RES, RES, 3), np.uint8))
        assert seen == [(False, False)]
        assert torch.backends.cudnn.allow_tf32 == old[0] and torch.backends.cuda.matmul.allow_tf32
    finally:
        hook.remove()
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def test_fewer_images_than_asked(assets, tmp_path, capsys):
    err = run_error(build_args(assets, tmp_path / "r", **{"--num-images": 7}), capsys)
    assert "holds 6 .jpg/.jpeg/.png images, fewer than the 7 asked" in err


def test_captions_json_without_an_image(assets, tmp_path, capsys):
    coco = json.loads(assets["coco"].read_text())
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != 99]  # 000003.jpg
    bad = tmp_path / "caps.json"
    bad.write_text(json.dumps(coco))
    err = run_error(build_args(assets, tmp_path / "r", **{"--captions": bad}), capsys)
    assert "caps.json do not match the images: image 000003.jpg has no caption" in err
    coco["images"] = [i for i in coco["images"] if i["file_name"] != "000002.png"]
    bad.write_text(json.dumps(coco))
    err = run_error(build_args(assets, tmp_path / "r", **{"--captions": bad}), capsys)
    assert "image 000002.png is not listed" in err


def test_captions_txt_too_short(assets, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("one\ntwo\nthree\n")
    err = run_error(build_args(assets, tmp_path / "r", **{"--captions": short}), capsys)
    assert "short.txt has 3 lines, fewer than the 6 images: no caption for image 000004.png" in err


def test_out_dir_that_is_not_a_reference(assets, tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "precious.txt").write_text("x")
    err = run_error(build_args(assets, tmp_path / "r"), capsys)
    assert "is not a reference dir" in err
    assert (tmp_path / "r" / "precious.txt").exists()


def test_show_of_a_non_reference_dir(tmp_path, capsys):
    err = run_error(["reference", "show", str(tmp_path)], capsys)
    assert "is not a reference dir (no reference.json)" in err


# ----------------------------------------------------------------------------------------------
# the scorer
# ----------------------------------------------------------------------------------------------
def test_fid_of_reference_images_is_zero_and_a_shift_is_not(assets, built, scorer):
    from sampling.scorers import make_scorer

    imgs = crops(assets)
    ref_trace = float(np.trace(scorer.ref_sigma))
    s = scorer.score(Generation(images=imgs, seeds=np.arange(6), prompts=EXPECTED_PROMPTS))
    assert s.ok and abs(s.fid) < 1e-6 * ref_trace
    dark = (imgs * 0.6).astype(np.uint8)
    f_dark = scorer.fid(dark)
    assert f_dark > 0.05 * ref_trace and f_dark > 1e4 * abs(s.fid)
    # make_scorer routes an "inception" reference here (lazy import); CLIP from reference.json
    other = make_scorer(ReferenceData("inception", built[1], {}))
    assert type(other).__name__ == "InceptionClipScorer" and other.clip is not None
    np.testing.assert_array_equal(other.features(dark), scorer.features(dark))


def test_resolution_mismatch_is_one_line(assets, scorer):
    small = np.zeros((3, 16, 16, 3), np.uint8)
    with pytest.raises(QsensError, match=r"^the reference was built at 32 px, the model "
                                         r"generates 16 px: build a reference with .*--resolution 16"):
        scorer.score(Generation(images=small, seeds=np.arange(3)))
    from sampling.reference import check_reference
    with pytest.raises(QsensError, match="generates 32x48 px"):
        check_reference(scorer.info, resolution=(32, 48))
    check_reference(scorer.info, resolution=RES)  # the same size passes


def test_network_sha_mismatch_is_one_line(assets, built):
    from core.provenance import file_sha256
    from sampling.inception import InceptionClipScorer

    rec, other = file_sha256(assets["inception"]), file_sha256(assets["other"])
    with pytest.raises(QsensError) as exc:
        InceptionClipScorer(built[1], inception_path=assets["other"])
    msg = str(exc.value)
    assert "\n" not in msg and rec[:16] in msg and other[:16] in msg and "do not compare" in msg


def hand_clip(assets, images, texts):
    """CLIP embeddings through the sub-models and projections directly (not get_*_features)."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(assets["clip"])).eval()
    proc = CLIPProcessor.from_pretrained(str(assets["clip"]))
    with torch.no_grad():
        px = proc.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        iv = model.visual_projection(model.vision_model(pixel_values=px).pooler_output)
        tok = proc.tokenizer(list(texts), padding=True, return_tensors="pt")
        tv = model.text_projection(model.text_model(**tok).pooler_output)
    iv = iv / iv.norm(dim=-1, keepdim=True)
    tv = tv / tv.norm(dim=-1, keepdim=True)
    return iv.double().numpy(), tv.double().numpy()


def test_clip_score_equals_hand_computation(assets, built, scorer):
    imgs = crops(assets)
    prompts = EXPECTED_PROMPTS[::-1]  # mismatched pairs: some cosines are negative → clamped
    s = scorer.score(Generation(images=imgs, seeds=np.arange(6), prompts=prompts))
    iv, tv = hand_clip(assets, imgs, prompts)
    cos = (iv * tv).sum(1)
    assert s.content_metric == "clip"
    assert s.content == pytest.approx(float(np.mean(100 * np.clip(cos, 0, None))), rel=1e-5, abs=1e-6)
    # the build recorded the real images' CLIP score against their own captions
    iv, tv = hand_clip(assets, imgs, EXPECTED_PROMPTS)
    real = float(np.mean(100 * np.clip((iv * tv).sum(1), 0, None)))
    info = json.loads((built[1] / "reference.json").read_text())
    assert info["clip_score_real"] == pytest.approx(real, rel=1e-5, abs=1e-6)


def test_class_conditional_content(assets, built, scorer):
    from sampling.inception import InceptionClipScorer

    imgs = crops(assets)
    labels = np.array([0, 1, 2, 0, 1, 2])
    gen = Generation(images=imgs, seeds=np.arange(6), labels=labels)
    s = scorer.score(gen)
    iv, tv = hand_clip(assets, imgs, ["a photo of a tench", "a photo of a goldfish",
                                      "a photo of a great white shark"])
    expected = float(np.mean((iv @ tv.T).argmax(1) == labels))
    assert s.ok and s.content_metric == "clip_zeroshot_accuracy"
    assert s.content == pytest.approx(expected)
    # no label names anywhere: content not measured, not a crash
    plain = InceptionClipScorer(built[1])
    assert plain.content_metric_for(gen) == "none" and math.isnan(plain.content_score(gen))
    with pytest.raises(QsensError, match="outside 0..2"):
        scorer.content_score(Generation(images=imgs[:2], seeds=np.arange(2), labels=np.array([0, 3])))


def test_no_clip_model_means_no_content(assets, tmp_path):
    from sampling.inception import InceptionClipScorer

    out = tmp_path / "noclip"
    assert main(build_args(assets, out, **{"--num-images": 4})) == 0
    sc = InceptionClipScorer(out, label_names=ID2LABEL)
    assert sc.clip is None
    for gen in (Generation(images=crops(assets)[:4], seeds=np.arange(4), prompts=EXPECTED_PROMPTS[:4]),
                Generation(images=crops(assets)[:4], seeds=np.arange(4), labels=np.arange(4) % 3)):
        assert sc.content_metric_for(gen) == "none" and math.isnan(sc.content_score(gen))

