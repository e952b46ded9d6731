"""A minimal image data set in the patchlens layout, for the ``image_dataset`` fixture
(``tests/conftest.py``) and any test that needs one at another size."""
import numpy as np
import pandas as pd
from PIL import Image


def write_image_dataset(root, n=4, size=(48, 64), seed=0):
    """A minimal data set in the patchlens layout: random RGB images, half-and-half semantic masks."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        sem = np.zeros(size, np.uint8)
        sem[:, size[1] // 2:] = 1 + i % 2
        Image.fromarray(img).save(root / f"im{i}.png")
        Image.fromarray(sem).save(root / f"im{i}_sem.png")
        rows.append(dict(image=f"im{i}", path=f"im{i}.png", split="train" if i % 2 else "val",
                         semantic=f"im{i}_sem.png", instance="", sequence="", frame=-1,
                         height=size[0], width=size[1], labels=str(1 + i % 2), uv=""))
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    pd.DataFrame({"class": [0, 1, 2], "name": ["background", "a", "b"]}).to_csv(
        root / "classes.csv", index=False)
    return root
