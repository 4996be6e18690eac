"""torchrun --nproc_per_node=2 with gloo on CPU: shuffle-BN, the queue gets keys from both ranks, ranks agree (the
video and the image task)."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

WORKER = textwrap.dedent(r'''
    import os, sys, json
    import torch, torch.nn as nn, torch.distributed as dist
    import torch.nn.functional as F
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from tdann_fast.models.moco import MoCo, concat_all_gather

    # --- 1. MoCo: shuffle-BN runs and unshuffles correctly; the queue receives the keys of both ranks
    torch.manual_seed(0)
    def backbone():
        return nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool3d(1), nn.Flatten())
    m = MoCo(backbone=backbone, feature_dim=8, dim=4, hidden_dim=16, queue_size=11, momentum=0.9)
    torch.manual_seed(100 + rank)
    q, k = torch.randn(3, 3, 2, 6, 6), torch.randn(3, 3, 2, 6, 6)
    m.encoder_k.eval()  # eval-mode BN: a key must not depend on which rank computed it
    ptr0 = int(m.queue_ptr)
    with torch.no_grad():
        m.momentum_update()
        direct = F.normalize(m.head_k(m.encoder_k(k)), dim=1)
    m.momentum = 1.0  # no further update inside forward, so 'direct' stays the reference
    loss, logits, keys = m(q, k)
    assert torch.allclose(keys, direct, atol=1e-5), "shuffle-BN did not unshuffle the keys"
    allk = concat_all_gather(keys)
    assert allk.shape[0] == 6
    idx = (ptr0 + torch.arange(6)) % 11
    assert torch.allclose(m.queue[:, idx].T, allk, atol=1e-6), "queue lacks keys from some rank"
    assert int(m.queue_ptr) == 6
    # shuffle-BN in train mode runs as well
    m.encoder_k.train(); m.momentum = 0.999
    loss2, _, _ = m(q, k)
    loss2.backward()
    queues = [torch.empty_like(m.queue) for _ in range(world)]
    dist.all_gather(queues, m.queue)
    assert torch.equal(queues[0], queues[1]), "queues differ across ranks"

    # --- 2. the trainer under DDP: parameters agree after steps
    from tdann_fast.train.config import load_config
    from tdann_fast.train.trainer import Trainer
    run_dir = sys.argv[1]
    cfg = load_config("smoke", [f"run_dir={run_dir}", "pretrain.steps=2", "batch_size=3",
                                "checkpoint_every=2", "moco.hidden_dim=32"])
    tr = Trainer(cfg, stop_after=1)
    tr.run()
    flat = torch.cat([p.detach().flatten() for p in tr.state.model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    assert torch.equal(gathered[0], gathered[1]), "ranks disagree on parameters"
    qs = [torch.empty_like(tr.state.model.queue) for _ in range(world)]
    dist.all_gather(qs, tr.state.model.queue)
    assert torch.equal(qs[0], qs[1])
    assert int(tr.state.model.queue_ptr) == (2 * 2 * 3) % tr.state.model.queue_size

    # --- 3. the image task (SimCLR, negatives gathered across ranks) under DDP: ranks agree after steps
    img = load_config("v1_smoke", [f"run_dir={run_dir}_image", "pretrain.steps=2", "batch_size=3",
                                   "checkpoint_every=2", "simclr.hidden_dim=32"])
    ti = Trainer(img, stop_after=1)
    ti.run()
    flat = torch.cat([p.detach().flatten() for p in ti.state.model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    assert torch.equal(gathered[0], gathered[1]), "image task: ranks disagree on parameters"
    if rank == 0:
        print("DDP-OK", json.dumps({"queue_size": tr.state.model.queue_size}))
    dist.barrier()  # both ranks are done with every collective before either tears the group down
    dist.destroy_process_group()
''')


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not found")
def test_torchrun_two_ranks_gloo(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun) if torchrun.exists() else "torchrun", "--standalone", "--nproc_per_node=2",
           str(script), str(tmp_path / "run")]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-5000:])
    assert "DDP-OK" in res.stdout
    from tdann_fast.train import load_checkpoint
    ck = load_checkpoint(tmp_path / "run" / "stage1_pretrain" / "checkpoint.pt")
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2 and ck["complete"]
    ci = load_checkpoint(tmp_path / "run_image" / "stage1_pretrain" / "checkpoint.pt")
    assert ci["task"] == "image_simclr" and ci["world_size"] == 2 and ci["complete"]
