"""Reliability: threads, errors in the backward pass, custom autograd Functions, Captum targets, empty batches,
inference mode, bad values in the inputs, TokenGradCAM on a block's output (issue 10, "Reliability")."""

import threading
import warnings

import pytest
import torch
from captum.attr import Saliency
from fixtures import make_open_clip

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
def test_threads_give_exactly_the_sequential_maps(oc_model, hf_model, images, tokens):
    """4 threads x 3 calls of image and text explainers on ONE model (fast paths, full backward, several layers
    single-head, baselines, Captum's Saliency on the same scorer) equal the sequential results; a HuggingFace
    model's image and text sides join in at the same time."""
    hf_image, hf_text = ImageTextSimilarity(hf_model, tokens), TextImageSimilarity(hf_model, images)
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
        "hf image fast": lambda: GradECLIP(hf_image).attribute_all(images),
        "hf image full": lambda: GradECLIP(hf_image, list(hf_model.vision_model.encoder.layers),
                                           single_head=True).attribute_all(images),
        "hf text row tail": lambda: GradECLIP(hf_text).attribute_all(tokens),
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
        with after_layer(after, never), warnings.catch_warnings(record=True) as halvings, \
                pytest.raises(torch.OutOfMemoryError, match="injected: out of memory"):
            warnings.simplefilter("always")
            make(chunk_size=k).attribute_all(x)
        assert any("retrying 1 at a time" in str(w.message) for w in halvings), name


# ------------------------------------------------------------------------------------------------ Captum targets
def test_every_captum_target_form_for_a_2d_output_equals_the_int_form(oc_model, images, tokens):
    """Every target form that Captum accepts for an (N, T) output (Saliency takes each) gives the int form's maps."""
    scorer = ImageTextSimilarity(oc_model, tokens)
    methods = [GradECLIP(scorer), GradECLIP(scorer, list(oc_model.visual.transformer.resblocks)),
               TokenGradCAM(scorer)]
    same = [1, -2, (1,), [1, 1], [(1,), (1,)], torch.tensor(1), torch.tensor([1]), torch.tensor([1, 1])]
    for method in methods:
        expected = method.attribute(images, target=1)
        for target in same:
            torch.testing.assert_close(method.attribute(images, target=target), expected, atol=0, rtol=0,
                                       msg=f"{type(method).__name__} {target!r}")
        per_example = method.attribute(images, target=[(0,), (2,)])
        torch.testing.assert_close(per_example, method.attribute(images, target=[0, 2]), atol=0, rtol=0)
        torch.testing.assert_close(per_example[1], method.attribute(images[1:], target=2)[0], atol=1e-6, rtol=1e-5)
    for target in same + [[(0,), (2,)]]:  # Captum itself takes all of them
        Saliency(scorer).attribute(images.clone(), target=target)
    with pytest.raises(ValueError, match="one int"):
        methods[0].attribute(images, target=[(0, 1), (2, 1)])
    with pytest.raises(ValueError, match="out of range"):
        methods[0].attribute(images, target=[(0,), (3,)])


# -------------------------------------------------------------------------------------------------- empty batches
def test_empty_batch_gives_an_empty_result_of_the_right_shape(oc_model, hf_model, images, tokens):
    for model in (oc_model, hf_model):
        image = ImageTextSimilarity(model, tokens)
        text = TextImageSimilarity(model, images)
        assert GradECLIP(image).attribute(images[:0], target=0).shape == (0, 1, 4, 4)
        assert GradECLIP(image, single_head=True).attribute(images[:0], target=[]).shape == (0, 1, 4, 4)
        assert GradECLIP(image).attribute_all(images[:0]).shape == (0, 3, 4, 4)
        assert GradECLIP(image).attribute_all(images[:0], [0, 2]).shape == (0, 2, 4, 4)
        assert GradECLIP(text).attribute(tokens[:0], target=1).shape == (0, tokens.shape[1])
        assert GradECLIP(text).attribute_all(tokens[:0]).shape == (0, 2, tokens.shape[1])
        assert TokenGradCAM(image).attribute(images[:0], target=0).shape == (0, 1, 4, 4)
        assert AttentionRollout(text).attribute((tokens[:0],))[0].shape == (0, tokens.shape[1])
        assert image(images[:0]).shape == (0, 3)
        assert text(tokens[:0]).shape == (0, 2)
        with pytest.raises(ValueError, match="out of range"):  # the targets are still checked
            GradECLIP(image).attribute(images[:0], target=7)


def test_empty_fixed_side_is_refused_at_construction(oc_model, images, tokens):
    with pytest.raises(ValueError, match="fixed side is empty.*at least one text"):
        ImageTextSimilarity(oc_model, tokens[:0])
    with pytest.raises(ValueError, match="fixed side is empty.*at least one text"):
        ImageTextSimilarity(oc_model, torch.zeros(0, 32))
    with pytest.raises(ValueError, match="fixed side is empty.*at least one image"):
        TextImageSimilarity(oc_model, images[:0])
    with pytest.raises(ValueError, match="fixed side is empty.*at least one image"):
        TextImageSimilarity(oc_model, torch.zeros(0, 32))


# ------------------------------------------------------------------------------------------------- inference mode
def test_scorers_built_under_inference_mode_work_everywhere(oc_model, hf_model, images, tokens):
    for model in (oc_model, hf_model):
        with torch.inference_mode():
            image = ImageTextSimilarity(model, tokens)
            text = TextImageSimilarity(model, images)
            inference_images, inference_tokens = images.clone(), tokens.clone()  # inference tensors as inputs too
        plain_image, plain_text = ImageTextSimilarity(model, tokens), TextImageSimilarity(model, images)
        assert not image.fixed_features.is_inference()
        pairs = [(GradECLIP(image).attribute_all(images), GradECLIP(plain_image).attribute_all(images)),
                 (GradECLIP(image, single_head=True).attribute(images, target=1),
                  GradECLIP(plain_image, single_head=True).attribute(images, target=1)),
                 (GradECLIP(text).attribute_all(tokens), GradECLIP(plain_text).attribute_all(tokens)),
                 (TokenGradCAM(image).attribute(images, target=2),
                  TokenGradCAM(plain_image).attribute(images, target=2)),
                 (Saliency(image).attribute(images.clone(), target=0),
                  Saliency(plain_image).attribute(images.clone(), target=0))]
        with torch.inference_mode():  # explainers called under inference mode, on inference tensors
            pairs.append((GradECLIP(image).attribute_all(inference_images), pairs[0][1]))
            pairs.append((GradECLIP(text).attribute(inference_tokens, target=0), pairs[2][1][:, 0]))
        for got, expected in pairs:
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------- bad values
def test_token_ids_outside_the_vocabulary_are_named(oc_model, hf_model, images, tokens):
    bad = tokens.clone()
    bad[2, 3], bad[0, 1] = 100, -1
    for model in (oc_model, hf_model):
        text = TextImageSimilarity(model, images)
        expected = r"token ids \[-1, 100\] in examples \[0, 2\] are outside the vocabulary of size 100 \(ids 0..99\)"
        for call in (lambda: GradECLIP(text).attribute(bad, target=0), lambda: GradECLIP(text).attribute_all(bad),
                     lambda: AttentionRollout(text).attribute(bad, target=0), lambda: text(bad),
                     lambda: ImageTextSimilarity(model, bad)):
            with pytest.raises(ValueError, match=expected):
                call()


def test_nan_or_inf_pixels_are_named(oc_model, hf_model, images, tokens):
    bad = torch.cat([images, images])
    bad[1, 0, 3, 3], bad[3, 2, 0, 0] = float("nan"), float("-inf")
    for model in (oc_model, hf_model):
        image = ImageTextSimilarity(model, tokens)
        for call in (lambda: GradECLIP(image).attribute(bad, target=0), lambda: GradECLIP(image).attribute_all(bad),
                     lambda: TokenGradCAM(image).attribute(bad, target=0), lambda: image(bad),
                     lambda: TextImageSimilarity(model, bad)):
            with pytest.raises(ValueError, match=r"inputs \[1, 3\] \(of N=4\) contain NaN or infinite values"):
                call()


# ------------------------------------------------------------------------------------ TokenGradCAM on an output
def test_token_gradcam_on_the_last_block_output_warns(oc_model, images, tokens):
    image = ImageTextSimilarity(oc_model, tokens)
    last = oc_model.visual.transformer.resblocks[-1]
    with pytest.warns(UserWarning, match="all zero; pass attribute_to_layer_input=True"):
        zero = TokenGradCAM(image, last).attribute(images, target=0)
    assert torch.count_nonzero(zero) == 0  # what the warning is about
    with pytest.warns(UserWarning, match="attribute_to_layer_input=True"):
        TokenGradCAM(TextImageSimilarity(oc_model, images), oc_model.transformer.resblocks[-1].attn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.count_nonzero(TokenGradCAM(image, last, attribute_to_layer_input=True).attribute(
            images, target=0)) > 0
        TokenGradCAM(image)
        TokenGradCAM(image, oc_model.visual.transformer.resblocks[0])  # its output is the last block's input
