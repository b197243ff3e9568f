import pytest
import torch
from PIL import Image

from models.factory import create_model, load_model
from models.preprocess import eval_transform


def test_factory_loads_a_vit_b32_state_dict_with_512_wide_embeddings(vit_b32_checkpoint):
    loaded = load_model("ViT-B-32", checkpoint=str(vit_b32_checkpoint))
    assert loaded.embed_dim == 512
    assert loaded.context_length == 77
    assert loaded.preprocess.size == (224, 224)
    assert loaded.model_id == "ViT-B-32/vit-b-32-random.safetensors"
    x = eval_transform(loaded.preprocess)(Image.new("RGB", (300, 200), "red")).unsqueeze(0)
    with torch.no_grad():
        img = loaded.model.encode_image(x, normalize=True)
        txt = loaded.model.encode_text(loaded.tokenizer(["a cat", "a dog"]), normalize=True)
    assert img.shape == (1, 512) and txt.shape == (2, 512)
    assert torch.allclose(img.norm(dim=-1), torch.ones(1), atol=1e-5)
    # the weights really came from the file: same file, same fingerprint; random init differs
    assert load_model("ViT-B-32", checkpoint=str(vit_b32_checkpoint)).fingerprint == loaded.fingerprint


def test_bundled_checkpoint_loads_from_its_directory(bundled):
    assert bundled.embed_dim == 128 and bundled.preprocess.size == (64, 64)
    assert len(bundled.fingerprint) == 16


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'ViT-Nope'"):
        create_model("ViT-Nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_model("ViT-B-32", checkpoint=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        create_model(str(tmp_path))
    with pytest.raises(ValueError, match="not both"):
        create_model("ViT-B-32", pretrained="openai", checkpoint=str(tmp_path / "x.pt"))
