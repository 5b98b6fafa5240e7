"""Feature extractors on real images (the Fashion-MNIST subset in data/fashion-mnist) and a tiny CLIP.

Inception runs at about 10 images/s on 2 cores, so these tests use few images (CI budget)."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from loopfree.evaldata import list_images, load_image, read_idx, read_prompts, select
from loopfree.features import ClipEmbedder, InceptionFeatures, bundled_inception_path, to_uint8
from loopfree.metrics import clip_score, frechet_distance

FASHION_TEST = Path(__file__).resolve().parents[2] / "data" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
N = 32  # images per set: few, because the 299x299 Inception pass dominates the test time


@pytest.fixture(scope="module")
def inception():
    return InceptionFeatures(batch_size=8)


@pytest.fixture(scope="module")
def fashion():
    return read_idx(FASHION_TEST, limit=2 * N)


def test_read_idx_layout(fashion):
    assert fashion.shape == (2 * N, 1, 28, 28) and fashion.dtype == torch.uint8
    assert fashion.float().mean() > 20  # real clothing images, not an empty buffer


@pytest.mark.integration  # slow: 3 x 32 images through Inception at 299x299 (~20 s on 2 cores)
def test_fid_separates_real_from_noise(inception, fashion):
    a, b = inception(fashion[:N]), inception(fashion[N:])
    noise = inception(torch.randint(0, 256, (N, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8))
    assert a.shape == (N, 2048) and torch.isfinite(a).all()
    assert abs(frechet_distance(a, a)) < 1e-6
    fid_real, fid_noise = frechet_distance(a, b), frechet_distance(a, noise)
    print(f"FID(test[:{N}], test[{N}:{2 * N}]) = {fid_real:.1f}, FID(test[:{N}], noise) = {fid_noise:.1f}")
    assert fid_real < 0.5 * fid_noise


def test_batching_and_optimisation_do_not_change_features(inception, fashion):
    plain = InceptionFeatures(batch_size=3, optimize=False)
    x = fashion[:4]
    torch.testing.assert_close(inception(x), plain(x), rtol=1e-4, atol=1e-4)


def test_preprocess_standard_input(inception):
    x = inception.preprocess(torch.full((2, 3, 64, 64), 255, dtype=torch.uint8))
    assert x.shape == (2, 3, 299, 299) and torch.allclose(x, torch.ones_like(x))
    assert bundled_inception_path().name == "default_1.pt"
    with pytest.raises(ValueError, match="uint8"):
        inception(torch.rand(1, 3, 8, 8))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        InceptionFeatures(path="/nonexistent/inception.pt")


def test_to_uint8_quantises_like_png():
    hwc = np.zeros((1, 2, 2, 3), dtype=np.float32)
    hwc[0, 0, 0] = [1.0, 0.5, 0.001]
    out = to_uint8(hwc)
    assert out.shape == (1, 3, 2, 2) and out[0, :, 0, 0].tolist() == [255, 128, 0]


def tiny_clip():
    from transformers import CLIPConfig, CLIPModel

    from loopfree.tokenizer import clip_tokenizer

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      max_position_embeddings=77),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        image_size=32, patch_size=8), projection_dim=16)
    return CLIPModel(cfg).eval(), clip_tokenizer()


def test_clip_score_with_a_tiny_random_clip(tmp_path):
    model, tokenizer = tiny_clip()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    clip = ClipEmbedder.from_dir(tmp_path)
    images = torch.randint(0, 256, (3, 3, 48, 64), dtype=torch.uint8)
    prompts = ["a red shoe", "a cat", "a lighthouse at dusk"]
    pixels = clip.preprocess(images)
    assert pixels.shape == (3, 3, 32, 32)
    # Centre crop of a 32x42 resize, normalised with the folder's mean/std: recompute by hand.
    resized = torch.nn.functional.interpolate(images.float() / 255, size=(32, 43), mode="bicubic", antialias=True).clamp(0, 1)
    torch.testing.assert_close(pixels, (resized[..., 5:37] - 0.5) / 0.25)
    img, txt = clip(images), clip.text(prompts)
    assert img.shape == txt.shape == (3, 16)
    with torch.no_grad():
        ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        ref_txt = model.text_projection(model.text_model(**ids).pooler_output)
        ref_img = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
    torch.testing.assert_close(txt, ref_txt)
    torch.testing.assert_close(img, ref_img)
    expected = torch.nn.functional.cosine_similarity(ref_img, ref_txt).mean().item()
    assert clip_score(img, txt) == pytest.approx(expected, abs=1e-4)
    with pytest.raises(FileNotFoundError, match="config.json"):
        ClipEmbedder.from_dir(tmp_path / "missing")


def test_prompt_sets(tmp_path):
    coco = tmp_path / "captions.json"
    coco.write_text(json.dumps({"annotations": [{"image_id": 9, "id": 5, "caption": "second "},
                                                {"image_id": 9, "id": 2, "caption": "first"},
                                                {"image_id": 3, "id": 7, "caption": "a dog"}]}))
    assert read_prompts(coco, "coco") == [("3", "a dog"), ("9", "first")]
    parti = tmp_path / "parti.tsv"
    parti.write_text("Prompt\tCategory\na cat\tAnimals\n\t\nbird\tAnimals\n")
    assert read_prompts(parti, "parti") == [("0", "a cat"), ("2", "bird")]
    text = tmp_path / "p.txt"
    text.write_text("one\n\nthree\n")
    assert read_prompts(text, "text") == [("0", "one"), ("2", "three")]
    with pytest.raises(ValueError, match="Prompt"):
        read_prompts(text, "parti")
    items = list(range(100))
    assert select(items, 10, seed=1) == select(items, 10, seed=1) == sorted(select(items, 10, seed=1))
    assert select(items, 10, seed=1) != select(items, 10, seed=2) and select(items, None, 0) == items


def test_image_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    PIL.Image.new("L", (5, 4), 7).save(tmp_path / "sub" / "b.png")
    PIL.Image.new("RGB", (5, 4), (1, 2, 3)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("x")
    files = list_images(tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a.png", "sub/b.png"]
    assert load_image(files[0])[:, 0, 0].tolist() == [1, 2, 3] and load_image(files[1]).shape == (3, 4, 5)
    with pytest.raises(ValueError, match="IDX"):
        read_idx(files[0])
