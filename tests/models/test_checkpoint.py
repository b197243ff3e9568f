import torch

from models.checkpoint import save_checkpoint
from models.factory import create_model, load_model, model_config, preprocess_of


def test_save_then_load_round_trips_exactly(tmp_path):
    torch.manual_seed(3)
    model = create_model("shapes-vit-s").eval()
    out = save_checkpoint(model, model_config("shapes-vit-s"), preprocess_of(model), tmp_path / "ck")
    loaded = load_model(str(out))
    a, b = model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.preprocess == preprocess_of(model)
    tokens = loaded.tokenizer(["a red circle"])
    with torch.no_grad():
        assert torch.equal(model.encode_text(tokens), loaded.model.encode_text(tokens))
    assert load_model(str(out)).fingerprint == loaded.fingerprint


def test_fingerprint_changes_with_weights(tmp_path):
    torch.manual_seed(0)
    m = create_model("shapes-vit-s")
    p1 = save_checkpoint(m, model_config("shapes-vit-s"), preprocess_of(m), tmp_path / "a")
    with torch.no_grad():
        m.logit_scale.add_(0.01)
    p2 = save_checkpoint(m, model_config("shapes-vit-s"), preprocess_of(m), tmp_path / "b")
    assert load_model(str(p1)).fingerprint != load_model(str(p2)).fingerprint
