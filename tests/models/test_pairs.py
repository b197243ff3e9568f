import pytest
from PIL import Image

from models.data.pairs import PairsDataset, read_csv_pairs, read_folder_pairs
from models.factory import load_model
from models.preprocess import eval_transform


def _img(path, colour="red"):
    Image.new("RGB", (40, 30), colour).save(path)
    return path


def test_csv_with_header_and_relative_paths(tmp_path):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.jpg", "blue")
    (tmp_path / "pairs.csv").write_text("filepath,caption\na.png,a red thing\nb.jpg,\"a blue, big thing\"\n")
    pairs = read_csv_pairs(tmp_path / "pairs.csv")
    assert [(p.name, c) for p, c in pairs] == [("a.png", "a red thing"), ("b.jpg", "a blue, big thing")]


def test_csv_without_header(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "p.csv").write_text(f"{tmp_path / 'a.png'},red\n")
    assert read_csv_pairs(tmp_path / "p.csv")[0][1] == "red"


def test_folder_with_sidecar_captions(tmp_path):
    _img(tmp_path / "x.png")
    (tmp_path / "x.txt").write_text("a red square\n")
    _img(tmp_path / "orphan.png")
    pairs = read_folder_pairs(tmp_path)
    assert [(p.name, c) for p, c in pairs] == [("x.png", "a red square")]


def test_dataset_yields_model_sized_tensors_and_reports_missing(tmp_path, bundled):
    _img(tmp_path / "x.png")
    ds = PairsDataset([(tmp_path / "x.png", "red")], eval_transform(bundled.preprocess))
    x, cap = ds[0]
    assert tuple(x.shape) == (3, 64, 64) and cap == "red"
    with pytest.raises(FileNotFoundError, match="not found"):
        PairsDataset([(tmp_path / "nope.png", "x")], eval_transform(bundled.preprocess))
    with pytest.raises(ValueError, match="no image"):
        read_folder_pairs(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else tmp_path)
