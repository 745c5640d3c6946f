"""Reliability: threads, errors in the backward pass, custom autograd Functions, Captum targets, empty batches,
inference mode, bad values in the inputs, TokenGradCAM on a block's output (issue 10, "Reliability")."""

import threading
import warnings

import pytest
import torch
from captum.attr import Saliency
from conftest import make_open_clip, make_tokens

from captum_gradeclip import GradECLIP, ImageTextSimilarity, LayerNotExecutedError, TextImageSimilarity
from captum_gradeclip.baselines import AttentionRollout, GradientWeightedAttention, TokenGradCAM


def _run_threads(jobs, threads: int = 4, repeats: int = 3):
    """Run every job ``repeats`` times in each of ``threads`` threads, all at once; the results per job name and
    every exception raised."""
    results = {name: [] for name in jobs}
    errors = []
    start = threading.Barrier(threads)

    def work(i):
        start.wait()
        for r in range(repeats):
            for name, job in (list(jobs.items())[i % len(jobs):] + list(jobs.items())[:i % len(jobs)]):
                try:
                    results[name].append(job())
                except Exception as e:  # noqa: BLE001 - collected and reported by the test
                    errors.append(f"{name}: {type(e).__name__}: {e}")

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return results, errors


# ------------------------------------------------------------------------------------------------------ threads
def test_threads_give_exactly_the_sequential_maps(oc_model, images, tokens):
    """4 threads x 3 calls of image and text explainers on ONE model (fast paths, full backward, several layers
    single-head, baselines, Captum's Saliency on the same scorer) equal the sequential results."""
    image_scorer = ImageTextSimilarity(oc_model, tokens)
    text_scorer = TextImageSimilarity(oc_model, images)
    blocks = list(oc_model.visual.transformer.resblocks)
    jobs = {
        "image fast": lambda: GradECLIP(image_scorer).attribute_all(images),
        "image full": lambda: GradECLIP(image_scorer, blocks[0]).attribute(images, target=[0, 2]),
        "image cut": lambda: GradECLIP(image_scorer, blocks).attribute_all(images),
        "image single head": lambda: GradECLIP(image_scorer, blocks, single_head=True).attribute_all(images),
        "text row tail": lambda: GradECLIP(text_scorer).attribute_all(tokens),
        "text full": lambda: GradECLIP(text_scorer, single_head=True).attribute(tokens, target=1),
        "token gradcam": lambda: TokenGradCAM(image_scorer).attribute(images, target=1),
        "rollout": lambda: AttentionRollout(text_scorer).attribute(tokens, target=0),
        "game": lambda: GradientWeightedAttention(image_scorer).attribute(images, target=0),
        # Captum's Saliency sets requires_grad on its input tensor and resets it: its own copy per call
        "saliency": lambda: Saliency(image_scorer).attribute(images.clone(), target=2),
    }
    sequential = {name: job() for name, job in jobs.items()}
    results, errors = _run_threads(jobs)
    assert not errors, errors[:5]
    for name, outs in results.items():
        assert len(outs) == 12
        for out in outs:
            torch.testing.assert_close(out, sequential[name], atol=1e-6, rtol=0, msg=name)


def test_two_explainers_on_one_model_concurrently(oc_model, images, tokens):
    """Two GradECLIP instances (image and text side) sharing one model, each called from two threads."""
    image = GradECLIP(ImageTextSimilarity(oc_model, tokens), list(oc_model.visual.transformer.resblocks))
    text = GradECLIP(TextImageSimilarity(oc_model, images))
    jobs = {"image": lambda: image.attribute_all(images), "text": lambda: text.attribute_all(tokens)}
    sequential = {name: job() for name, job in jobs.items()}
    results, errors = _run_threads(jobs, threads=4, repeats=4)
    assert not errors, errors[:5]
    for name, outs in results.items():
        for out in outs:
            torch.testing.assert_close(out, sequential[name], atol=1e-6, rtol=0)


def test_hooks_ignore_forwards_of_other_threads(oc_model, images, tokens):
    """A bare forward of the model in another thread (not through this package, so not under its lock) while an
    explainer's hooks are registered neither breaks nor changes the explainer's maps."""
    scorer = ImageTextSimilarity(oc_model, tokens)
    ge = GradECLIP(scorer, list(oc_model.visual.transformer.resblocks))
    expected = ge.attribute_all(images)
    stop = threading.Event()

    def bare_forwards():
        while not stop.is_set():
            with torch.no_grad():
                oc_model.encode_image(images)

    other = threading.Thread(target=bare_forwards)
    other.start()
    try:
        for _ in range(8):
            torch.testing.assert_close(ge.attribute_all(images), expected, atol=1e-6, rtol=0)
    finally:
        stop.set()
        other.join()


def test_a_real_double_run_names_the_cause(images, tokens):
    """A block applied twice in one forward pass: the error says so (not 'pass blocks of the tower', not threads)."""
    model = make_open_clip()
    resblocks = model.visual.transformer.resblocks
    block = resblocks[1]
    handle = block.register_forward_hook(lambda m, a, out: m.__class__.forward(m, out))  # runs the block again
    try:
        with pytest.raises(LayerNotExecutedError, match=r"ran 2 times in one forward pass.*more than once"):
            GradECLIP(ImageTextSimilarity(model, tokens), block).attribute(images, target=0)
    finally:
        handle.remove()
