"""Every Captum method runs on the same scorer; GradECLIP composes with Captum's wrappers and metrics."""

import matplotlib
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Saliency
from captum.attr import visualization as viz
from captum.metrics import infidelity, sensitivity_max

from captum_gradeclip import GradECLIP, ImageTextSimilarity, TextImageSimilarity
from captum_gradeclip.metrics import expand_to_input

matplotlib.use("Agg")


def test_gradient_methods_on_the_scorer(oc_model, images, tokens):
    scorer = ImageTextSimilarity(oc_model, tokens)
    x = images.clone().requires_grad_(False)
    ig, delta = IntegratedGradients(scorer).attribute(x, target=1, n_steps=8, return_convergence_delta=True)
    assert ig.shape == images.shape and torch.isfinite(ig).all()
    # completeness: the attributions sum to S(x) - S(0), up to the integration error
    with torch.no_grad():
        gap = scorer(images)[:, 1] - scorer(torch.zeros_like(images))[:, 1]
    torch.testing.assert_close(ig.sum(dim=(1, 2, 3)), gap, atol=float(delta.abs().max()) + 1e-5, rtol=0)
    sal = Saliency(scorer).attribute(images, target=1)
    assert sal.shape == images.shape and sal.abs().sum() > 0
    gc = LayerGradCam(scorer, oc_model.visual.conv1).attribute(images, target=1)
    assert gc.shape == (2, 1, 4, 4)


def test_noise_tunnel_over_gradeclip(oc_model, images, tokens):
    ge = GradECLIP(ImageTextSimilarity(oc_model, tokens))
    nt = NoiseTunnel(ge)
    torch.manual_seed(0)
    out = nt.attribute(images, nt_type="smoothgrad", nt_samples=3, stdevs=0.0, target=0)
    torch.testing.assert_close(out, ge.attribute(images, target=0), atol=1e-6, rtol=1e-5)
    noisy = nt.attribute(images, nt_type="smoothgrad", nt_samples=3, stdevs=0.1, target=0)
    assert noisy.shape == (2, 1, 4, 4) and torch.all(noisy >= 0)


def test_infidelity_and_sensitivity(oc_model, images, tokens):
    scorer = ImageTextSimilarity(oc_model, tokens)
    ge = GradECLIP(scorer)
    maps = ge.attribute(images, target=0)

    def perturb(inputs):
        noise = torch.randn_like(inputs) * 0.05
        return noise, inputs - noise

    torch.manual_seed(0)
    inf = infidelity(scorer, perturb, images, expand_to_input(maps, images), target=0, normalize=True,
                     n_perturb_samples=4)
    assert inf.shape == (2,) and torch.isfinite(inf).all()
    # a tuple input gives a tuple back, so sensitivity_max works without a wrapper
    sens = sensitivity_max(ge.attribute, (images,), target=0, n_perturb_samples=3)
    assert sens.shape == (2,) and torch.isfinite(sens).all()
    # and is consistent for one example: not scaled by sqrt(n_perturb_samples) (Captum's bare-tensor pitfall)
    torch.manual_seed(1)
    one = sensitivity_max(ge.attribute, (images[:1],), target=0, n_perturb_samples=4, perturb_radius=1e-9)
    assert float(one) < 1e-3


def test_visualize_image_attr_renders_upsampled_map(oc_model, images, tokens):
    maps = GradECLIP(ImageTextSimilarity(oc_model, tokens)).attribute(images, target=0)
    up = LayerAttribution.interpolate(maps, images.shape[-2:], "bilinear")
    attr = up[0].permute(1, 2, 0).detach().numpy()
    img = images[0].permute(1, 2, 0).numpy()
    img = (img - img.min()) / (img.max() - img.min())
    fig, ax = viz.visualize_image_attr(attr, img, method="blended_heat_map", sign="positive", use_pyplot=False)
    assert fig is not None and ax is not None


def test_text_scorer_with_captum_ig_on_embeddings(hf_model, images, tokens):
    from captum.attr import LayerIntegratedGradients
    scorer = TextImageSimilarity(hf_model, images)
    mask = torch.ones_like(tokens)
    lig = LayerIntegratedGradients(scorer, hf_model.text_model.embeddings.token_embedding)
    out = lig.attribute(tokens, target=0, additional_forward_args=(mask,), n_steps=4)
    assert out.shape == tokens.shape + (48,)
