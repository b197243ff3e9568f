import math

import torch
import torch.nn.functional as F

from models.loss import INIT_LOGIT_SCALE, MAX_LOGIT_SCALE, clamp_logit_scale, contrastive_loss


def test_loss_matches_hand_computed_case():
    img = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    txt = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    scale = torch.tensor(10.0)
    # similarities: img0.txt0=1, img0.txt1=0, img1.txt0=0.6, img1.txt1=0.8
    s = [[10.0, 0.0], [6.0, 8.0]]
    def ce(row, i):
        return -(row[i] - math.log(sum(math.exp(v) for v in row)))
    i2t = (ce(s[0], 0) + ce(s[1], 1)) / 2
    cols = [[s[0][0], s[1][0]], [s[0][1], s[1][1]]]
    t2i = (ce(cols[0], 0) + ce(cols[1], 1)) / 2
    expected = (i2t + t2i) / 2
    assert math.isclose(float(contrastive_loss(img, txt, scale)), expected, rel_tol=1e-6)


def test_loss_is_symmetric_and_lower_for_matched_pairs():
    torch.manual_seed(0)
    a = F.normalize(torch.randn(8, 16), dim=-1)
    matched = contrastive_loss(a, a, torch.tensor(20.0))
    shuffled = contrastive_loss(a, a[torch.randperm(8)], torch.tensor(20.0))
    assert matched < shuffled
    b = F.normalize(torch.randn(8, 16), dim=-1)
    assert torch.isclose(contrastive_loss(a, b, torch.tensor(5.0)), contrastive_loss(b, a, torch.tensor(5.0)))


def test_temperature_initialised_to_paper_value_and_clamped(bundled_dir):
    from models.factory import create_model

    model = create_model("shapes-vit-s")
    assert math.isclose(model.logit_scale.exp().item(), INIT_LOGIT_SCALE, rel_tol=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    clamp_logit_scale(model)
    assert math.isclose(model.logit_scale.exp().item(), MAX_LOGIT_SCALE, rel_tol=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(-3.0)
    clamp_logit_scale(model)
    assert model.logit_scale.item() == 0.0
