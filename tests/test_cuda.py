"""GPU checks: skipped cleanly where CUDA is absent (CI has no GPU)."""

import pytest
import torch

from captum_gradeclip import GradECLIP, ImageTextSimilarity, TextImageSimilarity

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")


def test_cuda_maps_equal_cpu_maps(images, tokens):
    from fixtures import make_open_clip
    model = make_open_clip()
    cpu_img = GradECLIP(ImageTextSimilarity(model, tokens)).attribute_all(images)
    cpu_txt = GradECLIP(TextImageSimilarity(model, images)).attribute_all(tokens)
    model = model.cuda()
    gpu_img = GradECLIP(ImageTextSimilarity(model, tokens.cuda())).attribute_all(images.cuda())
    gpu_txt = GradECLIP(TextImageSimilarity(model, images.cuda())).attribute_all(tokens.cuda())
    assert gpu_img.is_cuda and gpu_txt.is_cuda
    torch.testing.assert_close(gpu_img.cpu(), cpu_img, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(gpu_txt.cpu(), cpu_txt, atol=1e-4, rtol=1e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = GradECLIP(ImageTextSimilarity(model, tokens.cuda())).attribute_all(images.cuda())
    assert float((low.cpu() - cpu_img).abs().max() / cpu_img.abs().max()) < 0.03


def test_cuda_at_most_three_syncs_per_call(images, tokens):
    """torch's own sync detector: at most the check of the input values, the fast path's self-check and the text
    crop, once each per call (the scorers, built once, are outside the measured calls)."""
    import warnings

    from fixtures import make_open_clip, make_tokens
    model = make_open_clip().cuda()
    imgs, many = images.cuda(), make_tokens((5, 7, 9, 12, 6, 8), seed=3).cuda()
    image_scorer, text_scorer = ImageTextSimilarity(model, many), TextImageSimilarity(model, imgs)
    calls = {
        "image fast path": lambda: GradECLIP(image_scorer, chunk_size=2).attribute_all(imgs),
        "image probe path": lambda: GradECLIP(image_scorer, list(
            model.visual.transformer.resblocks), chunk_size=2).attribute_all(imgs),
        "text": lambda: GradECLIP(text_scorer, chunk_size=1).attribute_all(many),
    }
    for name, call in calls.items():
        call()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                call()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        assert len(syncs) <= 3, (name, [str(w.message) for w in syncs])
