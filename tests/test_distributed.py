"""Imp_D across processes: two gloo processes on the CPU return what one process returns over all their data."""

import itertools
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

from lfssd_tutorial import compute_importance, load_importance
from lfssd_tutorial.__main__ import main
from lfssd_tutorial.distributed import BatchShards, all_reduce_sums

from .conftest import make_cnn

WORLD = 2
COMBINATIONS = list(itertools.product(["l2", "fisher", "true_fisher"], ["batch", "sample"]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dataset() -> TensorDataset:
    """27 samples: batches of 4 are 4, 4, 4, 4, 4, 4, 3, so the two shards hold 4 and 3 batches (15 and 12 samples)."""
    g = torch.Generator().manual_seed(5)
    return TensorDataset(torch.randn(27, 1, 8, 8, generator=g), torch.randint(0, 5, (27,), generator=g))


def loader(rank: int, world: int) -> DataLoader:
    return DataLoader(dataset(), batch_sampler=BatchShards(27, 4, rank=rank, world=world))


def importances(data) -> dict:
    return {(objective, granularity): compute_importance(make_cnn(), data, objective=objective, granularity=granularity,
                                                          sample_chunk_size=3)
            for objective, granularity in COMBINATIONS}


def _compute_on_shard(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = {key: dict(value) for key, value in importances(loader(rank, WORLD)).items()}
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_batch_shards_deal_every_batch_once():
    for length, size, world in [(27, 4, 2), (27, 4, 3), (8, 4, 3), (0, 4, 2), (5, 10, 2)]:
        shards = [list(BatchShards(length, size, rank=r, world=world)) for r in range(world)]
        assert [len(s) for s in shards] == [len(BatchShards(length, size, rank=r, world=world)) for r in range(world)]
        dealt = sorted((b for s in shards for b in s), key=lambda b: b[0])
        assert dealt == [list(range(i, min(i + size, length))) for i in range(0, length, size)]
    with pytest.raises(ValueError, match="rank"):
        BatchShards(10, 2, rank=2, world=2)


def test_without_a_process_group_nothing_is_reduced():
    sums = [torch.ones(3)]
    assert all_reduce_sums(sums, 7) == 7
    assert torch.equal(sums[0], torch.ones(3))


def test_two_processes_match_one(tmp_path):
    assert [len(list(loader(r, WORLD))) for r in range(WORLD)] == [4, 3]
    mp.spawn(_compute_on_shard, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    want = importances(loader(0, 1))
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for key in COMBINATIONS:
            assert got[key].keys() == want[key].keys()
            for name in want[key]:
                torch.testing.assert_close(got[key][name], want[key][name], rtol=1e-5, atol=1e-8, msg=f"{key} {name}")
    # the shards alone are not the answer: each rank's importance differs from its own shard's
    shard = compute_importance(make_cnn(), loader(1, WORLD), objective="l2", granularity="sample")
    assert not torch.allclose(shard["classifier.weight"], want[("l2", "sample")]["classifier.weight"])


CONFIG = """\
name: distributed-test
data: {dataset: digits, train_subset: 60, test_subset: 20, batch_size: 16}
model: {name: small_cnn, width: 4}
scenario: {kind: full_class, targets: ["1"]}
methods: [lfssd]
seeds: [0]
"""


def _cli_on_rank(rank: int, port: int, argv: list) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    assert main(argv) == 0


def test_command_under_two_processes_writes_the_one_process_file(tmp_path, method="ssd", granularity="batch"):
    """Batch granularity, where which samples share a batch matters: the shards' batches are the one process's."""
    from lfssd_tutorial.experiments import load_config
    from lfssd_tutorial.experiments.build import load_data, model_factory

    config_path = tmp_path / "c.yaml"
    config_path.write_text(CONFIG)
    config = load_config(str(config_path))
    model = model_factory(config, load_data(config, augment=False), torch.device("cpu"))()
    checkpoint = tmp_path / "model.pt"
    torch.save(model.state_dict(), checkpoint)  # the seeded initialisation stands in for a trained model
    common = ["importance", "--config", str(config_path), "--checkpoint", str(checkpoint), "--device", "cpu",
              "--no-progress", "--method", method, "--granularity", granularity, "--file"]

    assert main([*common, str(tmp_path / "one.importance")]) == 0
    mp.spawn(_cli_on_rank, args=(free_port(), [*common, str(tmp_path / "two.importance")]), nprocs=WORLD, join=True)
    one, two = load_importance(tmp_path / "one.importance"), load_importance(tmp_path / "two.importance")
    assert one.keys() == two.keys() == dict(model.named_parameters()).keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-8)


def test_command_without_a_model_says_what_to_do(tmp_path, capsys):
    config_path = tmp_path / "c.yaml"
    config_path.write_text(CONFIG)
    code = main(["importance", "--config", str(config_path), "--out", str(tmp_path), "--file", str(tmp_path / "x.importance")])
    assert code == 2
    assert "lfssd_tutorial train" in capsys.readouterr().err
