"""The report on a tiny made-up set: the baseline, a perfect model and a hue-swapping model."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

from evaluate import metrics, report
from preprocess import color

RED, GREEN = 0, 1


def tile(label: int, seed: int, size=(32, 32)) -> np.ndarray:
    """uint8 RGB: a smooth random lightness pattern, tinted red (R > G) or green (G > R)."""
    rng = np.random.default_rng(seed)
    value = rng.uniform(90, 160, (size[0], 1, 1)) + rng.uniform(-20, 20, (1, size[1], 1))
    tint = np.array([60.0, -30.0, -30.0]) if label == RED else np.array([-30.0, 60.0, -30.0])
    return np.clip(value + tint, 0, 255).astype(np.uint8)


def photos() -> list[tuple[str, np.ndarray, int]]:
    """Six labelled 32 px tiles (4 red, 2 green) and an unlabelled 48x40 photo, third in line."""
    labelled = [(f"tile{i}.png", tile(label, i), label) for i, label in enumerate([RED, GREEN, RED, RED, GREEN, RED])]
    return [*labelled[:2], ("photo.png", tile(GREEN, 9, (48, 40)), -1), *labelled[2:]]


def red_or_green() -> keras.Model:
    """A hand-set classifier: red when mean(R - G) > 0.1 (0..1 units), else green; gray is green."""
    images = keras.Input([32, 32, 3], dtype="uint8")
    mean = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1.0 / 255.0)(images))
    dense = keras.layers.Dense(2)
    logits = dense(mean)
    dense.set_weights([np.array([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]]), np.array([-0.1, 0.0])])
    return keras.Model(images, logits)


def identity(rgb: np.ndarray) -> np.ndarray:
    return rgb.copy()


def swap_red_green(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., [1, 0, 2]]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    prior = np.ones(len(color.ab_bins()))
    results = report.evaluate({"identity": identity, "swap": swap_red_green}, photos(), out, prior=prior,
                              classifier=red_or_green(), grid_count=4, epochs={"identity": 2, "swap": 1})  # fmt: skip
    return out, results


def test_files_are_written_in_full(evaluated):
    out, results = evaluated
    assert sorted(path.name for path in out.iterdir()) == [
        "grid.png", "metrics.json", "metrics.md", "metrics_by_epoch.png", "tradeoff.png"
    ]  # fmt: skip
    assert json.loads((out / "metrics.json").read_text()) == results
    # 4 photos, 2 per row; a cell: 4 columns (gray, identity, swap, truth) of 32 px zoomed to 96, 4 px margins
    assert Image.open(out / "grid.png").size == (2 * (4 * 96 + 8), 2 * (96 + 8))
    # 10 panels (the 9 metrics that vary by model and the classifier's) in rows of 4 at 3.2 x 2.6 inches, 100 dpi
    assert Image.open(out / "metrics_by_epoch.png").size == (1280, 780)
    assert Image.open(out / "tradeoff.png").size == (640, 440)


def test_identity_scores_perfectly_and_the_baseline_has_no_colour(evaluated):
    _, results = evaluated
    assert list(results["models"]) == ["baseline", "identity", "swap"]
    assert results["images"] == [name for name, _, _ in photos()]
    perfect = results["models"]["identity"]["mean"]
    assert perfect["mse_ab"] == 0.0 and perfect["psnr"] == metrics.PSNR_CAP
    assert perfect["auc"] == pytest.approx(1.0) and perfect["accuracy"] == 1.0
    assert perfect["ssim"] == pytest.approx(1.0)
    baseline = results["models"]["baseline"]["mean"]
    assert baseline["colorfulness"] < 0.5
    assert baseline["colorfulness_truth"] == results["truth"]["colorfulness"] > 20.0
    for model in results["models"].values():
        assert len(model["per_image"]) == 7
    # swapping R and G keeps colourfulness exactly (rg only changes sign) but moves every hue
    swap = results["models"]["swap"]["mean"]
    assert swap["colorfulness_gap"] == pytest.approx(0.0, abs=1e-9)
    assert swap["auc"] < 0.8 and swap["mae_ab"] > 20.0


def test_semantic_accuracy_per_model_on_the_labelled_tiles(evaluated):
    _, results = evaluated
    assert results["semantic_images"] == 6  # the 48x40 photo has no label and another size
    assert results["truth"]["semantic_accuracy"] == 1.0
    assert results["models"]["identity"]["mean"]["semantic_accuracy"] == 1.0
    assert results["models"]["baseline"]["mean"]["semantic_accuracy"] == pytest.approx(2 / 6)  # all "green"
    assert results["models"]["swap"]["mean"]["semantic_accuracy"] == 0.0  # red and green swapped


def test_markdown_table_has_a_row_per_model_and_units_in_the_header(evaluated):
    out, results = evaluated
    lines = (out / "metrics.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header[:4] == ["model", "MSE ab (Lab²)", "MAE ab (Lab)", "PSNR (dB)"]
    assert header[-1] == "classifier acc." and "colourfulness of truth" not in header
    rows = {row.split("|")[1].strip(): [cell.strip() for cell in row.strip("|").split("|")[1:]] for row in table[2:]}
    assert list(rows) == ["baseline", "identity", "swap"]
    identity_row = dict(zip(header[1:], rows["identity"]))
    assert identity_row["MSE ab (Lab²)"] == "0" and identity_row["PSNR (dB)"] == "100"
    assert identity_row["AuC"] == "1" and identity_row["classifier acc."] == "1"
    assert lines[-1] == (f"The truth: colourfulness {results['truth']['colorfulness']:.4g}, "
                         "classifier accuracy 1 on the 6 labelled images the column scores.")  # fmt: skip


def test_bad_models_are_named_in_the_error(tmp_path):
    with pytest.raises(ValueError, match="grayscale baseline"):
        report.evaluate({"baseline": identity}, photos(), tmp_path)
    with pytest.raises(ValueError, match="half on tile0.png .. tile1.png .one of 2 photos.: .*truth.s shape"):
        report.evaluate({"half": lambda rgb: rgb[::2]}, photos(), tmp_path)
    with pytest.raises(ValueError, match="not evaluated: swap"):
        report.evaluate({"identity": identity}, photos(), tmp_path, epochs={"swap": 1})


def test_photos_of_one_size_go_to_the_models_together_in_order(tmp_path):
    seen = []

    def recording(rgb):
        seen.append(rgb.shape)
        return rgb.copy()

    report.evaluate({"identity": recording}, photos(), tmp_path, grid_count=0, batch_pixels=3 * 32 * 32)
    # two 32 px tiles, the 48x40 photo alone, then four tiles in runs of at most three
    assert seen == [(2, 32, 32, 3), (1, 48, 40, 3), (3, 32, 32, 3), (1, 32, 32, 3)]
    runs = report.same_size_batches(photos(), max_pixels=1)
    assert [[name for name, _, _ in run] for run in runs] == [[name] for name, _, _ in photos()]


def test_scores_do_not_depend_on_how_photos_are_batched(tmp_path):
    prior = np.arange(1.0, len(color.ab_bins()) + 1)
    together = report.evaluate({"swap": swap_red_green}, photos(), tmp_path / "a", prior=prior, classifier=red_or_green())
    alone = report.evaluate({"swap": swap_red_green}, photos(), tmp_path / "b", prior=prior, classifier=red_or_green(),
                            batch_pixels=1)  # fmt: skip
    assert together == alone
