"""The MVM's work tensors: kept per thread and per (name, shape, dtype), within a byte budget."""

from __future__ import annotations

import threading

import torch

from aimc.core import workpool

CPU = torch.device("cpu")


def test_the_same_request_gets_the_same_tensor_and_other_requests_others():
    workpool.clear()
    a = workpool.work_tensor("y", (4, 8), torch.float32, CPU)
    assert workpool.work_tensor("y", torch.Size((4, 8)), torch.float32, CPU) is a
    assert workpool.work_tensor("y", (4, 9), torch.float32, CPU) is not a
    assert workpool.work_tensor("y", (4, 8), torch.int32, CPU) is not a
    assert workpool.work_tensor("z", (4, 8), torch.float32, CPU) is not a
    assert workpool.work_tensor("y", (4, 8), torch.float32, CPU) is a  # still kept beside the others


def test_the_pool_is_emptied_when_it_would_exceed_its_budget(monkeypatch):
    monkeypatch.setattr(workpool, "POOL_BYTES", 1000)
    workpool.clear()
    a = workpool.work_tensor("a", (100,), torch.float32, CPU)  # 400 bytes
    b = workpool.work_tensor("b", (100,), torch.float32, CPU)  # 800 in all
    assert workpool.work_tensor("a", (100,), torch.float32, CPU) is a
    c = workpool.work_tensor("c", (100,), torch.float32, CPU)  # 1,200 > 1,000: the pool starts afresh
    assert workpool.work_tensor("c", (100,), torch.float32, CPU) is c
    assert workpool.work_tensor("a", (100,), torch.float32, CPU) is not a
    assert workpool.work_tensor("b", (100,), torch.float32, CPU) is not b
    workpool.clear()


def test_each_thread_has_its_own_tensors():
    workpool.clear()
    mine = workpool.work_tensor("y", (16,), torch.float32, CPU)
    theirs = []
    worker = threading.Thread(target=lambda: theirs.append(workpool.work_tensor("y", (16,), torch.float32, CPU)))
    worker.start()
    worker.join()
    assert theirs[0] is not mine and theirs[0].data_ptr() != mine.data_ptr()
