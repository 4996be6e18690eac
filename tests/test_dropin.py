"""Drop-in use: a tiny CNN trained in a plain loop with task loss + SpatialLoss lowers the spatial loss."""
import torch
from torch import nn

from tdann_fast import CorticalSheet, FeatureTaps, SpatialLoss, spatial_correlation_loss


def test_plain_training_loop_lowers_spatial_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    sheet = CorticalSheet.retinotopic(16, 8, 8, 4.0, 1.5, num_neighbourhoods=300, min_units=20, seed=0)
    spatial = SpatialLoss({"3": sheet}, alpha=5.0, neighbourhoods_per_step=4, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = torch.randn(64, 3, 8, 8)
    labels = torch.randint(0, 4, (64,))
    probe = torch.randn(32, 3, 8, 8)

    def probe_loss():
        with torch.no_grad(), FeatureTaps(model, ["3"]) as taps:
            model(probe)
        return spatial_correlation_loss(taps.features["3"], sheet.positions, sheet.neighbourhoods).item()

    before = probe_loss()
    with FeatureTaps(model, ["3"]) as taps:
        for step in range(60):
            idx = torch.randint(0, 64, (16,))
            logits = model(data[idx])
            loss = nn.functional.cross_entropy(logits, labels[idx]) + spatial(taps.features)
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = probe_loss()
    assert after < before - 0.05, (before, after)
