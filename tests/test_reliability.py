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


# --------------------------------------------------------------------------- errors and Functions in the backward
def identity_function(old_style: bool = False, error=None, failures: int = 0):
    """An identity ``autograd.Function`` (new style with a generated vmap rule, or old style without
    ``setup_context``) whose backward raises ``error`` on its first ``failures`` calls (every call: -1)."""
    left = [failures]

    def backward(ctx, grad):
        if error is not None and left[0] != 0:
            left[0] -= 1
            raise error
        return grad

    if old_style:
        return type("OldStyleIdentity", (torch.autograd.Function,), dict(
            forward=staticmethod(lambda ctx, x: x.clone()), backward=staticmethod(backward)))
    return type("Identity", (torch.autograd.Function,), dict(
        generate_vmap_rule=True, forward=staticmethod(lambda x: x.clone()),
        setup_context=staticmethod(lambda ctx, inputs, output: None), backward=staticmethod(backward)))


class after_layer:
    """Applies ``function`` to the output of ``module`` (a forward hook, removed on exit)."""

    def __init__(self, module, function):
        self.module, self.function = module, function

    def __enter__(self):
        self.handle = self.module.register_forward_hook(lambda m, args, out: self.function.apply(out))

    def __exit__(self, *exc):
        self.handle.remove()


def _sides(model, images, tokens):
    """(name, explainer factory, inputs, module after the explained layers) for the fast and full paths."""
    image = ImageTextSimilarity(model, tokens)
    text = TextImageSimilarity(model, images)
    blocks = list(model.visual.transformer.resblocks)
    return [("image fast", lambda **kw: GradECLIP(image, **kw), images, model.visual.ln_post),
            ("image cut", lambda **kw: GradECLIP(image, blocks, **kw), images, model.visual.ln_post),
            ("image full", lambda **kw: GradECLIP(image, blocks, single_head=True, **kw), images,
             model.visual.ln_post),
            ("text row tail", lambda **kw: GradECLIP(text, **kw), tokens, model.ln_final),
            ("text full", lambda **kw: GradECLIP(text, single_head=True, **kw), tokens, model.ln_final)]


def test_old_style_function_after_the_layer_falls_back_to_the_full_backward(oc_model, images, tokens):
    """An autograd.Function without setup_context after the explained layer: the fast paths fall back to the full
    backward with one warning per explainer; the maps equal those without it."""
    for name, make, x, after in _sides(oc_model, images, tokens):
        expected = make().attribute_all(x)
        ge = make()
        with after_layer(after, identity_function(old_style=True)):
            with warnings.catch_warnings(record=True) as first:
                warnings.simplefilter("always")
                got = ge.attribute_all(x)
            with warnings.catch_warnings(record=True) as second:
                warnings.simplefilter("always")
                again = ge.attribute(x, target=1)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5, msg=name)
        torch.testing.assert_close(again.reshape(expected[:, 1].shape), expected[:, 1], atol=1e-6, rtol=1e-5, msg=name)
        fell_back = [w for w in first if "full backward" in str(w.message)]
        assert len(fell_back) == (1 if name in ("image fast", "text row tail") else 0), name
        assert not [w for w in second if "full backward" in str(w.message)], name


def test_a_real_backward_error_reaches_the_user_as_itself(oc_model, images, tokens):
    for name, make, x, after in _sides(oc_model, images, tokens):
        for old_style in (False, True):
            bug = identity_function(old_style, RuntimeError("injected bug in a backward"), failures=-1)
            with after_layer(after, bug), pytest.raises(RuntimeError) as caught:
                make().attribute_all(x)
            assert "injected bug" in str(caught.value), (name, old_style, str(caught.value)[:200])


def test_out_of_memory_halves_the_chunk_and_then_raises_itself(oc_model, images, tokens):
    for name, make, x, after in _sides(oc_model, images, tokens):
        expected = make().attribute_all(x)
        k = expected.shape[1]
        once = identity_function(error=torch.OutOfMemoryError("injected: out of memory"), failures=1)
        with after_layer(after, once), pytest.warns(RuntimeWarning, match=f"batched backward of {k} targets; "
                                                                           f"retrying {(k + 1) // 2} at a time"):
            got = make(chunk_size=k).attribute_all(x)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5, msg=name)
        never = identity_function(error=torch.OutOfMemoryError("injected: out of memory"), failures=-1)
        with after_layer(after, never), pytest.warns(RuntimeWarning, match="retrying 1 at a time"), \
                pytest.raises(torch.OutOfMemoryError, match="injected: out of memory"):
            make(chunk_size=k).attribute_all(x)
