"""GPU checks: skipped cleanly where CUDA is absent (CI has no GPU)."""

import pytest
import torch

from captum_gradeclip import GradECLIP, ImageTextSimilarity, TextImageSimilarity

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")


def test_cuda_maps_equal_cpu_maps(images, tokens):
    from conftest import make_open_clip
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
