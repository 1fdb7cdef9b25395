"""Tiny generated datasets in the published layouts of each benchmark."""

import os

import numpy as np
from PIL import Image

from robustness.data import imagenet_wnids, _timm_info

WNIDS = imagenet_wnids()


def image(path, size=32, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def class_folders(root, wnids, per_class=2, size=48, ext=".JPEG"):
    for i, w in enumerate(wnids):
        for j in range(per_class):
            image(os.path.join(root, w, f"{w}_{j}{ext}"), size, seed=i * 10 + j)


def video(path, frames=6, size=32, seed=0):
    import av

    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    with av.open(path, mode="w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(frames):
            frame = np.roll(base, t, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def make_all(root):
    """{benchmark: folder} for every benchmark, a few images each."""
    paths = {}
    paths["imagenet-val"] = p = os.path.join(root, "val")
    class_folders(p, WNIDS[:3])
    with open(os.path.join(p, WNIDS[0], "broken.JPEG"), "wb") as f:
        f.write(b"not an image")
    paths["imagenet-a"] = p = os.path.join(root, "imagenet-a")
    class_folders(p, _timm_info("imagenet_a_synsets.txt")[:2], ext=".jpg")
    paths["imagenet-r"] = p = os.path.join(root, "imagenet-r")
    class_folders(p, _timm_info("imagenet_r_synsets.txt")[:2], ext=".jpg")
    paths["imagenet-o"] = p = os.path.join(root, "imagenet-o")
    class_folders(p, ["n01443537", "n01704323"], ext=".jpg")
    paths["imagenet-sketch"] = p = os.path.join(root, "sketch")
    class_folders(p, WNIDS[:2])
    paths["stylized-imagenet"] = p = os.path.join(root, "stylized")
    class_folders(p, WNIDS[:2], size=224, ext=".png")  # published at 224x224
    paths["imagenet-c"] = p = os.path.join(root, "imagenet-c")
    for sev in ("1", "2"):
        class_folders(os.path.join(p, "gaussian_noise", sev), WNIDS[:2], size=224)
        class_folders(os.path.join(p, "blur", "motion_blur", sev), WNIDS[:2], size=224)  # grouped layout
    paths["imagenet-p"] = p = os.path.join(root, "imagenet-p")
    for pert in ("gaussian_noise", "translate_2"):
        for i, w in enumerate(WNIDS[:2]):
            video(os.path.join(p, pert, w, f"v{i}.mp4"), seed=i)
    paths["imagenet-9"] = p = os.path.join(root, "imagenet-9")
    classes = ["00_dog", "01_bird", "02_wheeled vehicle", "03_reptile", "04_carnivore", "05_insect",
               "06_musical instrument", "07_primate", "08_fish"]
    for variation in ("original", "mixed_same", "mixed_rand"):
        for i, c in enumerate(classes):
            image(os.path.join(p, variation, "val", c, f"{variation}_{i}.JPEG"), 40, seed=i)
    return paths
