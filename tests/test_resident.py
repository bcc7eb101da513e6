"""The device-resident cache: the same batches as the prefetching loader, and when it is chosen."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vivace.data import make_dataloaders, resident
from vivace.data.resident import DeviceCache, choose_data_on_device
from vivace.learner import Learner
from vivace.models import create_model


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """Landscape, portrait and square images of three colours: the canvas, sizes and transposes all used."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    shapes = [(40, 30), (30, 50), (32, 32), (60, 24)]  # (width, height)
    for split, n in (("train", 6), ("val", 3)):
        for c, name in enumerate(("red", "green", "blue")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                w, h = shapes[(i + c) % len(shapes)]
                pixels = rng.integers(0, 90, (h, w, 3))
                pixels[..., c] += 150
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


def loaders(folder: Path, data_on_device: str, **kwargs):
    return make_dataloaders(folder, size_px=16, presize_px=24, batch_size=4, valid_batch_size=5, seed=0, device="cpu", workers=1,
                            progress=False, data_on_device=data_on_device, **kwargs)


def assert_same_batches(a, b):
    pairs = list(zip(a, b, strict=True))
    assert pairs
    for (xa, ya), (xb, yb) in pairs:
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_resident_cache_holds_the_cached_pixels(mixed_folder, monkeypatch):
    monkeypatch.setattr(resident, "COPY_ROWS", 4)  # several copy chunks, the last one short
    dls = loaders(mixed_folder, "off")
    on_device = DeviceCache(dls.cache, "cpu")
    assert torch.equal(on_device.pixels, torch.from_numpy(np.array(dls.cache.pixels)))
    rows = np.array([7, 0, 3, 3, 20])
    host, there = dls.cache.gather(rows), on_device.gather(rows)
    assert torch.equal(host.pixels, there.pixels) and there.pixels.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(host.sizes, there.sizes) and torch.equal(host.transposed, there.transposed)
    assert there.transposed.any() and not there.transposed.all()  # portrait and landscape images


@pytest.mark.parametrize("augment", [{}, {"train_crop": "square"}, {"max_rotate_deg": 20.0, "max_lighting": 0.3}])
def test_both_paths_give_the_same_batches(mixed_folder, augment):
    host, device = loaders(mixed_folder, "off", augment=augment), loaders(mixed_folder, "on", augment=augment)
    assert isinstance(device.train.cache, DeviceCache) and not isinstance(host.train.cache, DeviceCache)
    for epoch in range(2):  # shuffled differently per epoch, augmented from the same seeded generator
        host.train.set_epoch(epoch)
        device.train.set_epoch(epoch)
        assert_same_batches(host.train, device.train)
    assert_same_batches(host.valid, device.valid)
    assert_same_batches(host.train.iter_from(2), device.train.iter_from(2))  # a resumed epoch
    for (a, ya), (b, yb) in zip(host.valid.iter_raw(), device.valid.iter_raw(), strict=True):  # TTA's input
        assert torch.equal(a.pixels, b.pixels) and torch.equal(a.sizes, b.sizes) and torch.equal(ya, yb)


def test_a_few_training_steps_are_the_same_on_both_paths(mixed_folder):
    weights = []
    for mode in ("off", "on"):
        torch.manual_seed(0)
        learn = Learner(loaders(mixed_folder, mode), create_model("xresnet18", n_out=3, widen=0.25),
                        cbs=[], metrics=None)
        learn.recorder.print_table = False
        learn.fit(2, 1e-2)
        weights.append(torch.cat([p.detach().flatten() for p in learn.model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_a_consumer_that_stops_early_leaves_no_thread(mixed_folder):
    import threading
    for mode in ("off", "on"):
        dls = loaders(mixed_folder, mode)
        next(iter(dls.train))
        assert not any(t.name == "vivace-prefetch" for t in threading.enumerate())


def test_the_choice_and_the_line_that_says_it(mixed_folder, monkeypatch, capsys):
    cache = loaders(mixed_folder, "off").cache
    assert choose_data_on_device("auto", cache, torch.device("cpu")) == (False, "")  # a CPU prefetches
    on, line = choose_data_on_device("on", cache, torch.device("cpu"))
    assert on and line.startswith("data: the cache (0.00 GB) is resident on cpu")
    cuda = torch.device("cuda", 0)
    nbytes = cache.pixels.nbytes
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * nbytes, 8 * nbytes))
    assert choose_data_on_device("auto", cache, cuda)[0]  # exactly half the free memory: it fits
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * nbytes - 2, 8 * nbytes))
    on, line = choose_data_on_device("auto", cache, cuda)
    assert not on and "prefetched" in line and "memory-mapped" in line and "over 50% of the free" in line
    on, line = choose_data_on_device("off", cache, cuda)
    assert not on and line.endswith("prefetched from the cache (0.00 GB) in host memory (data_on_device off)")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (nbytes - 1, 8 * nbytes))
    on, line = choose_data_on_device("on", cache, cuda)  # asked for, but bigger than the free memory
    assert not on and line.endswith("memory-mapped: on cuda:0 it would take its free 0.0 GB "
                                    "(data_on_device on falls back)")
    with pytest.raises(ValueError, match="data_on_device='gpu' is not one of: auto, on, off"):
        choose_data_on_device("gpu", cache, cuda)
    make_dataloaders(mixed_folder, size_px=16, presize_px=24, batch_size=4, device="cpu", workers=1, data_on_device="on")
    assert "is resident on cpu; batches are gathered there" in capsys.readouterr().out


def test_a_cache_bigger_than_the_hosts_available_memory_stays_memory_mapped(mixed_folder, monkeypatch):
    from vivace.data import resident
    cache = loaders(mixed_folder, "off").cache
    monkeypatch.setattr(resident, "free_memory", lambda device: cache.pixels.nbytes - 1)
    on, line = choose_data_on_device("on", cache, torch.device("cpu"))
    assert not on and "memory-mapped: on cpu it would take its free" in line and "falls back" in line
    dls = make_dataloaders(mixed_folder, size_px=16, presize_px=24, batch_size=4, device="cpu", workers=1,
                           data_on_device="on", progress=False)
    assert not isinstance(dls.train.cache, DeviceCache)  # batches from the memory map
    assert resident.free_memory(torch.device("cpu")) > 0  # MemAvailable, read for real


def _fake_cgroup(tmp_path, line: str, folder: str, files: dict[str, str]) -> tuple[str, str]:
    """A /proc/self/cgroup with `line` and a cgroup tree under tmp_path holding `files` in `folder`."""
    tmp_path.mkdir(parents=True)
    proc = tmp_path / "cgroup"
    proc.write_text(f"{line}\n")
    where = tmp_path / "sys" / folder
    where.mkdir(parents=True)
    for name, text in files.items():
        (where / name).write_text(text)
    return str(proc), str(tmp_path / "sys")


def test_a_containers_memory_limit_bounds_the_free_memory(tmp_path):
    from vivace.data.resident import cgroup_free_memory
    gib = 2**30
    # cgroup v2 (Docker, Kubernetes): 4 GiB limit, 3 GiB used of which 1 GiB is inactive page cache
    v2 = _fake_cgroup(tmp_path / "v2", "0::/docker/abc", "docker/abc",
                      {"memory.max": f"{4 * gib}\n", "memory.current": f"{3 * gib}\n",
                       "memory.stat": f"anon {2 * gib}\ninactive_file {gib}\n"})
    assert cgroup_free_memory(*v2) == 2 * gib
    # cgroup v1, the memory controller in its own hierarchy; used past the limit: nothing left
    v1 = _fake_cgroup(tmp_path / "v1", "4:memory:/job", "memory/job",
                      {"memory.limit_in_bytes": f"{gib}", "memory.usage_in_bytes": f"{3 * gib}",
                       "memory.stat": "total_inactive_file 0\n"})
    assert cgroup_free_memory(*v1) == 0
    unlimited = _fake_cgroup(tmp_path / "none", "0::/", "", {"memory.max": "max\n"})
    assert cgroup_free_memory(*unlimited) is None
    assert cgroup_free_memory(str(tmp_path / "no-such-file")) is None
