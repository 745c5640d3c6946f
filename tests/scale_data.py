"""Small image datasets on disk for the dataset-job tests: shapes scenes as JPEG and PNG files, two sizes."""

from pathlib import Path
from typing import Dict, List

from PIL import Image

def write_scenes(root: Path, count: int, seed: int = 0, nested: bool = True) -> List[Path]:
    """``count`` shapes scenes under ``root`` (every other one in ``sub/``, PNG there, JPEG at the top; every
    third one 64 x 96 instead of 64 x 64), returned in the order written."""
    from captum_gradeclip.data.shapes import generate_scenes
    scenes = generate_scenes(count, image_size=64, num_objects=2, seed=seed)
    paths = []
    for i in range(count):
        image = Image.fromarray((scenes.images[i].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
        if i % 3 == 0:
            image = image.resize((64, 96))
        folder = root / "sub" if nested and i % 2 else root
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"scene{i:03d}.{'png' if i % 2 else 'jpg'}"
        image.save(path, quality=95) if path.suffix == ".jpg" else image.save(path)
        paths.append(path)
    return paths


def write_truncated_jpeg(path: Path, like: Path) -> Path:
    """The first half of the JPEG ``like``: a header that opens, data that ends early."""
    data = like.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def in_process_maps(paths: Dict[str, Path], prompts_of: Dict[str, List[str]], size: str = "native"):
    """Reference results computed here, image by image, straight with ``GradECLIP.attribute_all`` (and
    ``attribute`` on the text side) on the shipped shapes model: ``{(key, text): (score, map, words, scores)}``."""
    import torch

    from captum_gradeclip import GradECLIP, ImageTextSimilarity, TextImageSimilarity
    from captum_gradeclip.loading import load_demo, prepare_image
    from captum_gradeclip.image_io import load_image
    lm = load_demo("cpu")
    mean, std = torch.tensor(lm.mean).view(1, 3, 1, 1), torch.tensor(lm.std).view(1, 3, 1, 1)
    out = {}
    for key, path in paths.items():
        prompts = prompts_of[key]
        pixels = (prepare_image(load_image(path), lm.image_size, 8, size)[None] - mean) / std
        tokens = lm.tokenize(prompts)
        scorer = ImageTextSimilarity(lm.model, tokens)
        with torch.no_grad():
            scores = scorer(pixels)[0]
        maps = GradECLIP(scorer).attribute_all(pixels)[0]
        tscorer = TextImageSimilarity(lm.model, pixels)
        words = GradECLIP(tscorer).attribute(tokens, target=[0] * len(prompts))
        keep = tscorer.tower.layout(tokens).report_mask
        for t, text in enumerate(prompts):
            positions = keep[t].nonzero().flatten().tolist()
            tokens_t = lm.token_strings(tokens[t])
            out[key, text] = (float(scores[t]), maps[t].numpy(), [tokens_t[p] for p in positions],
                              words[t, positions].numpy())
    return out
